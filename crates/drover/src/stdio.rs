//! Standard input and output as one async byte stream, for `drover ssh-proxy`. OpenSSH gives
//! a ProxyCommand two pipes; a pipe is read and written without blocking, straight from the
//! reactor (tokio's `stdin()` hops to a blocking thread for every read, which costs at scp's
//! rates). Anything else (a terminal, a file) falls back to tokio's own.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;

pub enum Input {
    Pipe(pipe::Receiver),
    Std(tokio::io::Stdin),
}

pub enum Output {
    Pipe(pipe::Sender),
    Std(tokio::io::Stdout),
}

pub struct Stdio {
    input: Input,
    output: Output,
}

impl Stdio {
    pub fn open() -> io::Result<Self> {
        let input = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .and_then(pipe::Receiver::from_owned_fd)
            .map_or_else(|_| Input::Std(tokio::io::stdin()), Input::Pipe);
        let output = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .and_then(pipe::Sender::from_owned_fd)
            .map_or_else(|_| Output::Std(tokio::io::stdout()), Output::Pipe);
        Ok(Self { input, output })
    }
}

impl AsyncRead for Stdio {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.input {
            Input::Pipe(p) => Pin::new(p).poll_read(cx, buf),
            Input::Std(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stdio {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.output {
            Output::Pipe(p) => Pin::new(p).poll_write(cx, buf),
            Output::Std(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.output {
            Output::Pipe(p) => Pin::new(p).poll_flush(cx),
            Output::Std(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.output {
            Output::Pipe(p) => Pin::new(p).poll_shutdown(cx),
            Output::Std(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
