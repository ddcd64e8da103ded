//! One command through two servers' contexts; agents' settings from a parameter.

use drover_testkit::{wait_status, DEADLINE};

use super::{agent, env, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_through_two_servers_contexts() {
    let (eu, us) = (env(), env());
    let s_eu = eu.start_server(0, &[]).unwrap();
    let s_us = us.start_server(0, &[]).unwrap();
    let (n_eu, _a_eu) = agent(&eu, &s_eu, "eu-1", &[]).await;
    let (_n_us, _a_us) = agent(&us, &s_us, "us-1", &[]).await;
    // The EU operator's CLI knows both servers.
    for (name, env, server) in [("prod-eu", &eu, &s_eu), ("prod-us", &us, &s_us)] {
        eu.cli_ok(&[
            "context",
            "add",
            name,
            "--server",
            &server.url,
            "--token-file",
            &env.path("server/admin.token").to_string_lossy(),
            "--ca-fingerprint",
            &server.fingerprint,
        ])
        .unwrap();
    }
    let list = json(&eu.cli_ok(&["context", "list", "-o", "json"]).unwrap());
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "prod-eu", "prod-us"]);

    // One command through both: one folded result, nodes named with their context.
    let out = eu
        .cli_ok(&[
            "run",
            "--contexts",
            "prod-eu,prod-us",
            "--targets",
            "all",
            "--",
            "echo hello",
        ])
        .unwrap();
    assert!(
        out.contains("2 nodes: Success, exit 0: prod-eu/eu-1, prod-us/us-1"),
        "{out}"
    );
    let v = json(
        &eu.cli_ok(&[
            "run",
            "--contexts",
            "prod-eu,prod-us",
            "--targets",
            "all",
            "-o",
            "json",
            "--",
            "true",
        ])
        .unwrap(),
    );
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["context"], "prod-us");
    // A node failing in one context fails the whole run, and says where.
    let script = format!("test \"$DROVER_NODE_ID\" = {n_eu}");
    let out = eu
        .cli(&[
            "run",
            "--contexts",
            "prod-eu,prod-us",
            "--targets",
            "all",
            "--",
            &script,
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("1 node: Failed, exit 1: prod-us/us-1"),
        "{text}"
    );
    assert!(
        text.contains("1 node: Success, exit 0: prod-eu/eu-1"),
        "{text}"
    );
    // An unknown context is refused before anything is sent anywhere.
    let before = json(&eu.cli_ok(&["commands", "list", "-o", "json"]).unwrap());
    let out = eu
        .cli(&[
            "run",
            "--contexts",
            "prod-eu,nowhere",
            "--targets",
            "all",
            "--",
            "true",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("\"nowhere\""),
        "{err}"
    );
    let after = json(&eu.cli_ok(&["commands", "list", "-o", "json"]).unwrap());
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len()
    );

    // Every verb takes --context; `use` changes the default.
    let us_nodes = eu
        .cli_ok(&["nodes", "list", "--context", "prod-us"])
        .unwrap();
    assert!(
        us_nodes.contains("us-1") && !us_nodes.contains("eu-1"),
        "{us_nodes}"
    );
    eu.cli_ok(&["context", "use", "prod-us"]).unwrap();
    let nodes = eu.cli_ok(&["nodes", "list"]).unwrap();
    assert!(nodes.contains("us-1"), "{nodes}");
    eu.cli_ok(&["context", "remove", "prod-us"]).unwrap();
    let out = eu.cli(&["nodes", "list", "--context", "prod-us"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no context \"prod-us\""));
    let out = eu
        .cli(&["context", "add", "bad name", "--server", &s_eu.url])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid context name"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_take_their_settings_from_a_parameter() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    env.cli_ok(&[
        "params",
        "put",
        "/drover/agents/web",
        r#"{"log_level":"debug","heartbeat_secs":7,"proxy":"proxy.invalid:3128"}"#,
    ])
    .unwrap();
    let id = env.register_agent(&server, "web-1", &[]).unwrap();
    // The proxy applies from the next connection: this one dials directly (an explicit
    // proxy setting of its own would win anyway).
    let agent = env
        .run_agent_with(
            "web-1",
            &["--settings-parameter", "/drover/agents/web"],
            &[],
        )
        .unwrap();
    wait_status(&server, std::slice::from_ref(&id), "Online")
        .await
        .unwrap();
    let line = agent
        .wait_for_line("applied settings from the server", DEADLINE)
        .unwrap();
    assert!(
        line.contains("log_level=\"debug\"") && line.contains("heartbeat_secs=7"),
        "{line}"
    );
    // Debug lines now show.
    agent
        .wait_for_line("DEBUG log filter changed", DEADLINE)
        .unwrap();
    let kept = std::fs::read_to_string(env.state_dir("web-1").join("settings.json")).unwrap();
    assert!(kept.contains("proxy.invalid:3128"), "{kept}");

    // A change reaches the running agent; an invalid one is refused and changes nothing.
    env.cli_ok(&[
        "params",
        "put",
        "/drover/agents/web",
        r#"{"heartbeat_secs":1}"#,
        "--overwrite",
    ])
    .unwrap();
    server
        .proc
        .wait_for_line("heartbeat_secs 1: from 5 to 600", DEADLINE)
        .unwrap();
    env.cli_ok(&[
        "params",
        "put",
        "/drover/agents/web",
        r#"{"log_level":"warn"}"#,
        "--overwrite",
    ])
    .unwrap();
    agent.wait_for_line("log_level=\"warn\"", DEADLINE).unwrap();

    // Only parameters under /drover/agents/ are read this way.
    let other = env.register_agent(&server, "web-2", &[]).unwrap();
    env.cli_ok(&["params", "put", "/app/config", r#"{"log_level":"debug"}"#])
        .unwrap();
    let _agent2 = env
        .run_agent_with("web-2", &["--settings-parameter", "/app/config"], &[])
        .unwrap();
    wait_status(&server, std::slice::from_ref(&other), "Online")
        .await
        .unwrap();
    server
        .proc
        .wait_for_line(
            "agents' settings are read only from parameters under",
            DEADLINE,
        )
        .unwrap();
}
