//! `drover up`: a server and a local agent in one foreground process, reusing what an earlier
//! run made in the same directory, and a CLI configuration pointing at them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use drover_agent::{AgentConfig, AgentEvent, RegisterOptions};
use drover_api::CreateActivation;
use drover_server::Server;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::{ServerArgs, UpArgs};
use crate::client_config::{save, ClientConfig};

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let config = crate::cmd_server::build_config(ServerArgs {
        data_dir: Some(dir.join("server")),
        listen: Some(args.listen.clone()),
        ..ServerArgs::default()
    })?;
    crate::cmd_server::raise_fd_limit();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "could not listen on {}: is another drover running? Pick another address with --listen",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let server = Server::open(config)
        .await
        .context("could not start the server")?;
    let fingerprint = server.ca_fingerprint().to_string();
    let token_path = server.data_dir().admin_token_path();
    let url = format!("https://{addr}");

    let stop_server = CancellationToken::new();
    let server_stop = stop_server.clone();
    let server_task =
        tokio::spawn(server.serve(listener, async move { server_stop.cancelled().await }));

    let token = std::fs::read_to_string(&token_path)
        .with_context(|| format!("reading {}", token_path.display()))?
        .trim()
        .to_string();
    let client_path = save(&ClientConfig {
        server: url.clone(),
        ca_fingerprint: fingerprint.clone(),
        token: token.clone(),
    })?;

    let agent_dir = dir.join("agent");
    let registered = drover_agent::Identity::load(&agent_dir);
    match registered {
        Ok(mut identity) => {
            // Reuse the identity; the server may listen on another port than last time.
            if identity.state.server != url {
                identity.state.server = url.clone();
                drover_agent::Identity::save(
                    &agent_dir,
                    &identity.state,
                    &identity.cert_pem,
                    &identity.key_pem,
                    None,
                )?;
            }
        }
        Err(_) => {
            let client = drover_client::Client::new(&url, &fingerprint, Some(token))?;
            let activation = client
                .create_activation(&CreateActivation {
                    registration_limit: 1,
                    expires_in_secs: 600,
                    tags: Default::default(),
                    description: "drover up: the local agent".into(),
                    default_name: String::new(),
                })
                .await
                .context("creating an activation for the local agent")?;
            drover_agent::register(
                RegisterOptions {
                    server: url.clone(),
                    activation_id: activation.id,
                    activation_code: activation.code,
                    ca_fingerprint: Some(fingerprint.clone()),
                    name: String::new(),
                    tags: [("drover".to_string(), "local".to_string())].into(),
                    state_dir: agent_dir.clone(),
                    proxy: None,
                },
                drover_agent::inventory::collect(),
            )
            .await
            .context("registering the local agent")?;
        }
    }

    let stop_agent = CancellationToken::new();
    let (events_tx, mut events) = mpsc::channel(16);
    let mut agent_config = AgentConfig::new(agent_dir);
    agent_config.backoff_base = Duration::from_millis(200);
    let agent_task = tokio::spawn(drover_agent::run(
        agent_config,
        stop_agent.clone(),
        Some(events_tx),
    ));

    // Report readiness once the local agent is connected.
    let node_id = tokio::select! {
        e = async {
            loop {
                match events.recv().await {
                    Some(AgentEvent::Connected { node_id }) => return Some(node_id),
                    Some(_) => continue,
                    None => return None,
                }
            }
        } => e,
        _ = tokio::time::sleep(Duration::from_secs(30)) => None,
    };
    // Status reaches the store in batches; report Online once the API says so too.
    let node_id = match node_id {
        Some(id) => wait_online(&url, &fingerprint, &token_path, &id)
            .await
            .then_some(id),
        None => None,
    };
    match node_id {
        Some(id) => println!("Drover is up. Local node {id} is Online."),
        None => println!("Drover is up, but the local agent has not connected yet (see the log)."),
    }
    println!("  API:            {url}/api/v1   (OpenAPI: {url}/api/v1/openapi.json)");
    println!("  Console:        {url}/   (sign in as a user: drover users create NAME --group admins --password-stdin)");
    println!("  Metrics:        {url}/metrics");
    println!("  CA fingerprint: {fingerprint}");
    println!("  Admin token:    {}", token_path.display());
    println!("  CLI config:     {}", client_path.display());
    println!("Try 'drover nodes list' in another terminal. Ctrl-C stops everything.");

    tokio::select! {
        _ = crate::cmd_server::shutdown_signal() => {}
        // Drain events so the agent never blocks on us.
        _ = async { while events.recv().await.is_some() {} } => {}
    }
    stop_agent.cancel();
    let _ = agent_task.await;
    stop_server.cancel();
    server_task.await.context("server task")??;
    Ok(ExitCode::SUCCESS)
}

async fn wait_online(url: &str, fingerprint: &str, token_path: &std::path::Path, id: &str) -> bool {
    let Ok(token) = std::fs::read_to_string(token_path) else {
        return false;
    };
    let Ok(client) = drover_client::Client::new(url, fingerprint, Some(token.trim().to_string()))
    else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if let Ok(n) = client.get_node(id).await {
            if n.status == "Online" {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
