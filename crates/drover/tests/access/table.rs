//! The console's node table (`GET /api/v1/node-table`): sorted, searched and paged on the
//! server, over exactly the nodes each user may see; and the node list's cursor, which never
//! names a node the user may not see.

use drover_testkit::Env;

use super::{create_user, env};

fn names(t: &drover_api::NodeTable) -> Vec<String> {
    t.nodes.iter().map(|n| n.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_table_sorts_searches_and_pages_only_what_the_user_may_see() {
    let env: Env = env();
    let server = env.start_server(0, &[]).unwrap();
    // Registered, never connected: the table shows them as they are.
    for (name, dept) in [
        ("amber-1", "Amber"),
        ("amber-2", "Amber"),
        ("amber-3", "Amber"),
        ("blue-1", "Blue"),
        ("blue-2", "Blue"),
    ] {
        let tag = format!("department={dept}");
        env.register_agent(&server, name, &["--tag", &tag]).unwrap();
    }
    let examples = format!("{}/../../examples/policies", env!("CARGO_MANIFEST_DIR"));
    env.cli_ok(&[
        "policy",
        "put",
        "departments",
        &format!("{examples}/departments.cedar"),
    ])
    .unwrap();
    let admin = server.client().unwrap();
    let alice = create_user(&env, &server, "alice", &["department=Amber".into()]);

    // Sorted by name, descending, two at a time: every row once, in order.
    let mut seen = Vec::new();
    for offset in [0, 2, 4] {
        let page = admin
            .node_table(&format!("sort=name&order=desc&limit=2&offset={offset}"))
            .await
            .unwrap();
        assert_eq!((page.total, page.visible, page.offset), (5, 5, offset));
        seen.extend(names(&page));
    }
    assert_eq!(
        seen,
        ["blue-2", "blue-1", "amber-3", "amber-2", "amber-1"].map(String::from)
    );
    // The search looks in every cell (here the tags), in any case.
    let blue = admin.node_table("search=DEPARTMENT%3Dblue").await.unwrap();
    assert_eq!(
        (blue.total, blue.visible, names(&blue)),
        (2, 5, vec!["blue-1".to_string(), "blue-2".to_string()])
    );
    // Alice sees her department's nodes only, and the counts say so: nothing of the others
    // leaks through a total.
    let hers = alice.node_table("sort=name").await.unwrap();
    assert_eq!((hers.total, hers.visible), (3, 3));
    assert_eq!(
        names(&hers),
        ["amber-1", "amber-2", "amber-3"].map(String::from)
    );
    let none = alice.node_table("search=blue").await.unwrap();
    assert_eq!((none.total, none.visible, none.nodes.len()), (0, 3, 0));
    // The node list's pages are full pages of what she may see, and its cursor is always a
    // node she may see: walking it one node at a time never names another department's.
    let mut cursor: Option<String> = None;
    let mut walked = Vec::new();
    loop {
        let page = alice
            .list_nodes_page(&[], Some(1), cursor.as_deref())
            .await
            .unwrap();
        assert!(page.nodes.len() <= 1);
        walked.extend(page.nodes.iter().map(|n| n.name.clone()));
        match page.next_cursor {
            Some(c) => {
                let named = admin.get_node(&c).await.unwrap();
                assert_eq!(
                    named.tags.get("department").map(String::as_str),
                    Some("Amber"),
                    "{c}"
                );
                cursor = Some(c);
            }
            None => break,
        }
    }
    walked.sort();
    assert_eq!(walked, ["amber-1", "amber-2", "amber-3"].map(String::from));
    // Past the end: an empty page, the same total.
    let past = alice.node_table("offset=10").await.unwrap();
    assert_eq!((past.total, past.nodes.len()), (3, 0));
    // Bad input is named.
    for (q, word) in [
        ("sort=colour", "sort"),
        ("order=sideways", "order"),
        ("limit=0", "limit"),
        ("cursor=x", "cursor"),
    ] {
        let e = admin.node_table(q).await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{q}: {e}");
        assert!(e.to_string().contains(word), "{q}: {e}");
    }
}
