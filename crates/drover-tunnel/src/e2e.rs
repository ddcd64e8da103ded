//! End-to-end encryption of a forwarded connection: a Noise handshake (`NK`: the client knows
//! the agent's static key, which the node's certificate vouches for; see `drover_pki::e2e`)
//! over the connection's stream, then every chunk sealed with AES-256-GCM in a frame of its own
//! (a 2-byte length, then the ciphertext). The server relays the frames and cannot read them.
//!
//! Each direction has its own nonce counter over one stateless transport, so the two
//! directions run as two futures without a lock.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The Noise protocol: the client (initiator) knows the agent's (responder's) static key.
pub const NOISE_PARAMS: &str = "Noise_NK_25519_AESGCM_SHA256";
/// Largest Noise message; a sealed chunk carries this less the 16-byte tag.
const MAX_MESSAGE: usize = 65535;
const MAX_PLAIN: usize = MAX_MESSAGE - 16;

#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("end-to-end encryption: {0}")]
    Noise(#[from] snow::Error),
    #[error("end-to-end encryption: the stream failed: {0}")]
    Io(#[from] std::io::Error),
}

/// An agent's static key pair (X25519). The private half never leaves the agent's process.
pub struct E2eKey {
    private: Vec<u8>,
    pub public: Vec<u8>,
}

impl std::fmt::Debug for E2eKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2eKey").finish_non_exhaustive()
    }
}

fn params() -> Result<snow::params::NoiseParams, E2eError> {
    Ok(NOISE_PARAMS.parse()?)
}

impl E2eKey {
    pub fn generate() -> Result<Self, E2eError> {
        let k = snow::Builder::new(params()?).generate_keypair()?;
        Ok(Self {
            private: k.private,
            public: k.public,
        })
    }
}

/// The keys of an established session, for both directions.
pub type Transport = snow::StatelessTransportState;

async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(body.len())
        .map_err(|_| std::io::Error::other("a Noise message over 65535 bytes"))?;
    let mut frame = Vec::with_capacity(body.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    s.write_all(&frame).await?;
    s.flush().await
}

async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    s.read_exact(buf).await?;
    Ok(true)
}

/// What both sides bind the handshake to: the target the client asked for, as
/// [`drover_proto::target_label`] writes it. A relay that sends the agent elsewhere makes the
/// handshake fail, so no byte of the client's reaches a target it did not ask for.
pub fn prologue(target: &str) -> Vec<u8> {
    let mut p = b"drover end-to-end v1\0".to_vec();
    p.extend_from_slice(target.as_bytes());
    p
}

/// The client's side of the handshake.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    agent_public: &[u8],
    target: &str,
) -> Result<Transport, E2eError> {
    let mut hs = snow::Builder::new(params()?)
        .prologue(&prologue(target))
        .remote_public_key(agent_public)
        .build_initiator()?;
    let mut out = vec![0u8; MAX_MESSAGE];
    let n = hs.write_message(&[], &mut out)?;
    write_frame(s, out.get(..n).unwrap_or_default()).await?;
    let mut msg = Vec::new();
    if !read_frame(s, &mut msg).await? {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    hs.read_message(&msg, &mut out)?;
    Ok(hs.into_stateless_transport_mode()?)
}

/// The agent's side of the handshake.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &E2eKey,
    target: &str,
) -> Result<Transport, E2eError> {
    let mut hs = snow::Builder::new(params()?)
        .prologue(&prologue(target))
        .local_private_key(&key.private)
        .build_responder()?;
    let mut msg = Vec::new();
    if !read_frame(s, &mut msg).await? {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    let mut out = vec![0u8; MAX_MESSAGE];
    hs.read_message(&msg, &mut out)?;
    let n = hs.write_message(&[], &mut out)?;
    write_frame(s, out.get(..n).unwrap_or_default()).await?;
    Ok(hs.into_stateless_transport_mode()?)
}

fn sealing(e: snow::Error) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("end-to-end encryption: {e}"),
    )
}

/// Seals `plain` into `frame` (length prefix, then ciphertext); returns the frame's length.
fn seal(t: &Transport, nonce: u64, plain: &[u8], frame: &mut [u8]) -> std::io::Result<usize> {
    let body = frame.get_mut(2..).unwrap_or_default();
    let len = t.write_message(nonce, plain, body).map_err(sealing)?;
    let prefix = u16::try_from(len)
        .map_err(std::io::Error::other)?
        .to_be_bytes();
    if let Some(p) = frame.get_mut(..2) {
        p.copy_from_slice(&prefix);
    }
    Ok(len + 2)
}

/// Copies both ways between `plain` and `sealed` until both directions end: what is read from
/// `plain` is sealed onto `sealed`, what comes from `sealed` is opened onto `plain`. A frame
/// that does not open (tampered, replayed, reordered) ends the connection. Each direction ends
/// with a sealed empty frame, so a relay that cuts the stream short is an error, not an end of
/// file the receiver would take for the whole of it. Returns the plain bytes sent and received.
pub async fn sealed_splice<P, E>(
    plain: &mut P,
    sealed: &mut E,
    t: &Transport,
) -> std::io::Result<(u64, u64)>
where
    P: AsyncRead + AsyncWrite + Unpin,
    E: AsyncRead + AsyncWrite + Unpin,
{
    let (mut plain_r, mut plain_w) = tokio::io::split(plain);
    let (mut sealed_r, mut sealed_w) = tokio::io::split(sealed);
    let up = async {
        let mut buf = vec![0u8; MAX_PLAIN];
        let mut frame = vec![0u8; MAX_MESSAGE + 2];
        let (mut nonce, mut total) = (0u64, 0u64);
        loop {
            let n = plain_r.read(&mut buf).await?;
            // At the end of the input, an empty frame at the next nonce: the end, sealed.
            let len = seal(t, nonce, buf.get(..n).unwrap_or_default(), &mut frame)?;
            sealed_w
                .write_all(frame.get(..len).unwrap_or_default())
                .await?;
            if n == 0 {
                sealed_w.shutdown().await?;
                return Ok::<u64, std::io::Error>(total);
            }
            nonce += 1;
            total += n as u64;
        }
    };
    let down = async {
        let mut msg = Vec::with_capacity(MAX_MESSAGE);
        let mut out = vec![0u8; MAX_MESSAGE];
        let (mut nonce, mut total) = (0u64, 0u64);
        while read_frame(&mut sealed_r, &mut msg).await? {
            let n = t.read_message(nonce, &msg, &mut out).map_err(sealing)?;
            nonce += 1;
            if n == 0 {
                // The sender's sealed end: nothing may follow it.
                if read_frame(&mut sealed_r, &mut msg).await? {
                    return Err(sealing(snow::Error::Input));
                }
                plain_w.shutdown().await?;
                return Ok::<u64, std::io::Error>(total);
            }
            plain_w.write_all(out.get(..n).unwrap_or_default()).await?;
            total += n as u64;
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "end-to-end encryption: the connection was cut short (no sealed end)",
        ))
    };
    tokio::try_join!(up, down)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[tokio::test]
    async fn bytes_cross_sealed_and_a_wrong_key_fails_the_handshake() {
        let agent = E2eKey::generate().unwrap();
        // The client's app, the client's end of the wire, the agent's end, the agent's target.
        let (mut app, mut client_plain) = tokio::io::duplex(1 << 20);
        let (mut client_wire, mut agent_wire) = tokio::io::duplex(1 << 20);
        let (mut agent_plain, mut target) = tokio::io::duplex(1 << 20);
        let public = agent.public.clone();
        let client = tokio::spawn(async move {
            let t = initiate(&mut client_wire, &public, "db:5432")
                .await
                .unwrap();
            sealed_splice(&mut client_plain, &mut client_wire, &t)
                .await
                .unwrap()
        });
        let server = tokio::spawn(async move {
            let t = respond(&mut agent_wire, &agent, "db:5432").await.unwrap();
            sealed_splice(&mut agent_plain, &mut agent_wire, &t)
                .await
                .unwrap()
        });
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        app.write_all(&data).await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        target.read_to_end(&mut got).await.unwrap();
        assert!(got == data);
        target.write_all(b"back").await.unwrap();
        target.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"back");
        assert_eq!(client.await.unwrap(), (300_000, 4));
        assert_eq!(server.await.unwrap(), (4, 300_000));

        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let someone = E2eKey::generate().unwrap();
        let real = E2eKey::generate().unwrap();
        let responder =
            tokio::spawn(async move { respond(&mut b, &real, "db:5432").await.is_ok() });
        let _ = initiate(&mut a, &someone.public, "db:5432").await;
        assert!(!responder.await.unwrap());
    }

    #[tokio::test]
    async fn a_relay_that_changes_the_target_fails_the_handshake() {
        let agent = E2eKey::generate().unwrap();
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let public = agent.public.clone();
        let responder =
            tokio::spawn(async move { respond(&mut b, &agent, "evil:5432").await.is_ok() });
        let client = initiate(&mut a, &public, "db:5432").await;
        assert!(client.is_err() || !responder.await.unwrap());
    }

    #[tokio::test]
    async fn a_stream_cut_short_is_an_error_not_an_end() {
        let agent = E2eKey::generate().unwrap();
        let (mut wire_c, mut wire_a) = tokio::io::duplex(1 << 16);
        let public = agent.public.clone();
        let server = tokio::spawn(async move {
            let t = respond(&mut wire_a, &agent, "t:1").await.unwrap();
            (t, wire_a)
        });
        let t = initiate(&mut wire_c, &public, "t:1").await.unwrap();
        let (ta, mut wire_a) = server.await.unwrap();
        // One sealed chunk from the agent's side, then the relay ends the stream: no sealed
        // end. (The relay keeps reading, so only the cut can fail the client.)
        let mut body = vec![0u8; 1024];
        let n = ta.write_message(0, b"partial", &mut body).unwrap();
        wire_a.write_all(&(n as u16).to_be_bytes()).await.unwrap();
        wire_a.write_all(&body[..n]).await.unwrap();
        wire_a.shutdown().await.unwrap();
        let (mut app, mut plain_c) = tokio::io::duplex(1 << 16);
        app.shutdown().await.unwrap();
        let r = sealed_splice(&mut plain_c, &mut wire_c, &t).await;
        let e = r.unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
        drop(plain_c);
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"partial");
        drop(wire_a);
    }
}
