//! A node that lies in its command progress: output past the command's limit, chunks out of
//! order, absurd step names. The server keeps what the rules allow and nothing else.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use drover_proto::{Message, OutputStream, Progress};
use drover_testkit::wire::{hello, next};
use drover_testkit::{Env, DEADLINE};
use drover_tunnel::FrameCodec;
use futures::SinkExt;

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

fn output(step: &str, offset: u64, data: &str) -> Message {
    Message::Progress(Progress::Output {
        step: step.into(),
        stream: OutputStream::Stdout,
        offset,
        len: data.len() as u64,
        data: data.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_enforces_the_output_limit_and_the_order_of_chunks() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "liar", &[])?;
    let identity = drover_agent::Identity::load(&env.state_dir("liar"))?;
    let mut hand = hello(&server, identity.client_auth()?).await?;
    assert!(
        matches!(hand.answer, Message::Welcome(_)),
        "{:?}",
        hand.answer
    );

    let sent = env.cli_ok(&[
        "run",
        "--targets",
        &id,
        "--output-limit",
        "1024",
        "--no-wait",
        "-o",
        "json",
        "--",
        "echo",
        "hi",
    ])?;
    let command: serde_json::Value = serde_json::from_str(&sent)?;
    let command_id = command["id"].as_str().unwrap().to_string();

    // First delivery.
    let stream = tokio::time::timeout(DEADLINE, hand.incoming.accept())
        .await?
        .unwrap();
    let mut inv = FrameCodec::framed(stream);
    assert!(matches!(next(&mut inv).await?, Message::Open(_)));
    let Message::Invoke(invoke) = next(&mut inv).await? else {
        panic!("expected an Invoke");
    };
    assert_eq!(invoke.output_limit, 1024);
    let step = "runShellScript";
    inv.send(Message::Progress(Progress::StepStarted {
        step: step.into(),
    }))
    .await?;
    inv.send(output(step, 0, &"a".repeat(600))).await?;
    // Crosses the limit: only its first 424 bytes are kept.
    inv.send(output(step, 600, &"b".repeat(600))).await?;
    // Wholly past the limit: dropped.
    inv.send(output(step, 1200, &"c".repeat(600))).await?;
    // A gap: refused, and the delivery ends.
    inv.send(output(step, 5000, "d")).await?;
    match next(&mut inv).await? {
        Message::Error { code, message } => {
            assert_eq!(code, "bad_progress");
            assert!(
                message.contains("at offset 5000, where 1800 was expected"),
                "{message}"
            );
        }
        other => panic!("expected the chunk to be refused, got {other:?}"),
    }

    // The next delivery starts where the store is.
    let stream = tokio::time::timeout(DEADLINE, hand.incoming.accept())
        .await?
        .unwrap();
    let mut inv = FrameCodec::framed(stream);
    assert!(matches!(next(&mut inv).await?, Message::Open(_)));
    let Message::Invoke(again) = next(&mut inv).await? else {
        panic!("expected the Invoke again");
    };
    assert_eq!(again.received.get(step), Some(&[1024, 0]));
    // A step name full of terminal escapes is refused too.
    inv.send(Message::Progress(Progress::StepStarted {
        step: "\u{1b}]0;owned\u{7}".into(),
    }))
    .await?;
    assert!(matches!(next(&mut inv).await?, Message::Error { .. }));
    let stream = tokio::time::timeout(DEADLINE, hand.incoming.accept())
        .await?
        .unwrap();
    let mut inv = FrameCodec::framed(stream);
    assert!(matches!(next(&mut inv).await?, Message::Open(_)));
    assert!(matches!(next(&mut inv).await?, Message::Invoke(_)));
    inv.send(Message::Progress(Progress::StepFinished {
        step: step.into(),
        status: "Success".into(),
        exit_code: 0,
        truncated: false,
    }))
    .await?;
    inv.send(Message::Progress(Progress::Finished {
        status: "Success".into(),
        exit_code: 0,
    }))
    .await?;
    assert!(matches!(next(&mut inv).await?, Message::Delivered));

    let stored = server.client()?.get_invocation(&command_id, &id).await?;
    let out = &stored.steps[0];
    assert_eq!(
        out.stdout,
        format!("{}{}", "a".repeat(600), "b".repeat(424))
    );
    assert!(out.truncated, "the server cut the output: it must say so");
    assert!(stored.steps.iter().all(|s| !s.name.contains('\u{1b}')));
    Ok(())
}
