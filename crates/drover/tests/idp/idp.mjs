// A real OpenID provider (the `oidc-provider` package) on loopback, for the access tests.
// It prints `issuer http://127.0.0.1:PORT` once listening. Its users, their claims and its one
// client come from the environment:
//   IDP_ACCOUNTS  JSON: {"alice": {"department": "Amber", "groups": ["oncall"]}, ...}
//   IDP_CLIENT_ID, IDP_CLIENT_SECRET
// Logging in is a form with a user name (no password: the tests play the user); consent is
// granted to the one client up front, as an organisation does for its own applications.
import http from 'node:http';
import Provider from 'oidc-provider';

const accounts = JSON.parse(process.env.IDP_ACCOUNTS ?? '{}');
const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.IDP_CLIENT_ID,
    client_secret: process.env.IDP_CLIENT_SECRET,
    application_type: 'native',
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
    department: ['department'],
  },
  scopes: ['openid', 'profile', 'groups', 'department'],
  // The claims of the scopes asked for go into the ID token itself.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
  },
  pkce: { required: () => true },
  cookies: { keys: ['drover test idp cookie key'] },
  async findAccount(_ctx, id) {
    const a = accounts[id];
    if (!a) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, department: a.department, groups: a.groups ?? [] };
      },
    };
  },
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile groups department');
    await grant.save();
    return grant;
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError(ctx, out) {
    ctx.type = 'text';
    ctx.body = `error: ${out.error}: ${out.error_description ?? ''}`;
  },
});

// The Drover server under test listens on a port chosen when it starts, after this provider:
// its console callback is allowed on any loopback port, as the CLI's loopback redirect is.
const consoleCallback = /^https:\/\/127\.0\.0\.1:[0-9]+\/api\/v1\/auth\/oidc\/callback$/;
const allowed = provider.Client.prototype.redirectUriAllowed;
provider.Client.prototype.redirectUriAllowed = function (uri) {
  return consoleCallback.test(uri) || allowed.call(this, uri);
};

const form = (uid) => `<!doctype html><form method="post" action="/interaction/${uid}/login">
<input name="login"><button>Sign in</button></form>`;

async function body(req) {
  let data = '';
  for await (const chunk of req) data += chunk;
  return new URLSearchParams(data);
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  const m = req.url.match(/^\/interaction\/([^/?]+)(\/login)?/);
  if (!m) return callback(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.prompt.name === 'consent') {
      // Consent to the one client is the organisation's, given up front.
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      if (details.prompt.details.missingOIDCScope) grant.addOIDCScope(details.prompt.details.missingOIDCScope.join(' '));
      if (details.prompt.details.missingOIDCClaims) grant.addOIDCClaims(details.prompt.details.missingOIDCClaims);
      const grantId = await grant.save();
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    if (!m[2]) {
      res.setHeader('content-type', 'text/html');
      return res.end(form(details.uid));
    }
    const login = (await body(req)).get('login');
    if (!accounts[login]) {
      res.statusCode = 403;
      return res.end(`no such user ${login}`);
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
  } catch (e) {
    res.statusCode = 500;
    res.end(String(e));
  }
});

console.log(`issuer ${issuer}`);
