//! Start-up settings and the `listening` log line.

use serde_json::json;

use crate::harness::{Launch, Pair, Server};

/// Checks that the `listening` line names the address, storage and runtime in
/// use, without colours.
pub(crate) async fn startup_log(pair: Pair) {
    let server = Server::start(pair).await;
    let line = server.listening_line();

    assert!(
        server.addr().ip().is_loopback(),
        "BROKER_HOST=127.0.0.1 should make the server listen on 127.0.0.1, line: {line:?}"
    );
    assert_ne!(
        server.addr().port(),
        0,
        "PORT=0 should be reported as the port actually bound, line: {line:?}"
    );
    assert!(
        !line.contains('\u{1b}'),
        "the log line should have no ANSI escape codes when stdout is not a terminal: {line:?}"
    );
    // The pair must really be in use, or a pair could pass while running another backend.
    let storage = format!("storage={}", pair.storage);
    assert!(
        line.contains(&storage),
        "the `listening` line should contain {storage:?}: {line:?}"
    );
    let runtime = format!("runtime={}", pair.runtime);
    assert!(
        line.contains(&runtime),
        "the `listening` line should contain {runtime:?}: {line:?}"
    );
}

/// Checks the settings given as flags instead of environment variables:
/// host, port, data folder, storage, runtime, and for the `postgres` storage
/// the database URL and schema.
pub(crate) async fn cli_flags(pair: Pair) {
    let server = Server::launch(Launch::new(pair).with_flags()).await;

    assert!(
        server.addr().ip().is_loopback(),
        "`--host 127.0.0.1` should make the server listen on 127.0.0.1, line: {:?}",
        server.listening_line()
    );
    let record = server.insert(&json!({ "event": "flags" })).await;
    assert_eq!(
        record["event"], "flags",
        "insert through a server configured by flags should store the event"
    );
}

/// Checks that a missing data folder, named by `BROKER_DATA_DIR` or by
/// `--data-dir`, exists once the server listens.
pub(crate) async fn data_dir_created(pair: Pair) {
    let from_env = Server::start(pair).await;
    assert!(
        from_env.data_dir().is_dir(),
        "`BROKER_DATA_DIR={}` should create that folder",
        from_env.data_dir().display()
    );

    let from_flag = Server::launch(Launch::new(pair).with_flags()).await;
    assert!(
        from_flag.data_dir().is_dir(),
        "`--data-dir {}` should create that folder",
        from_flag.data_dir().display()
    );
}

/// Checks that without a data folder setting the server stores under `./tmp`
/// and keeps the data there across a restart.
pub(crate) async fn default_data_dir(pair: Pair) {
    let mut server = Server::launch(Launch::new(pair).with_default_data_dir()).await;
    server.insert(&json!({ "event": "kept", "data": 1 })).await;

    let folder = server.data_dir();
    assert!(
        folder.is_dir(),
        "the default data folder ./tmp should be created in the working directory"
    );
    let entries = std::fs::read_dir(&folder)
        .expect("failed to list the default data folder")
        .count();
    assert!(
        entries > 0,
        "the default data folder {} should contain the store after an insert",
        folder.display()
    );

    server.restart().await;
    let history = server.collection("kept").await;
    assert_eq!(
        history.len(),
        1,
        "the record in the default data folder should survive a restart, got {history:?}"
    );
}

/// Checks that `GET /health` reports a running server with working storage.
pub(crate) async fn health_ok(pair: Pair) {
    let server = Server::start(pair).await;
    server.insert(&json!({ "event": "a" })).await;

    let reply = server.get("/health").await;
    assert_eq!(reply.status, 200, "GET /health: {}", reply.text);
    let body = reply.json();
    assert_eq!(body["status"], "ok", "GET /health: {body}");
    assert_eq!(body["storage"], "ok", "GET /health: {body}");
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json"),
        "GET /health should be JSON"
    );
}

/// Checks that `GET /openapi.yaml` serves the API description kept in the
/// repository, without a token, and that it describes every route.
pub(crate) async fn openapi_served(pair: Pair) {
    let server = Server::start(pair).await;

    let reply = server.get("/openapi.yaml").await;
    assert_eq!(reply.status, 200, "GET /openapi.yaml: {}", reply.text);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/yaml"),
        "GET /openapi.yaml should be YAML"
    );
    let document = include_str!("../../../docs/openapi.yaml");
    assert_eq!(
        reply.text, document,
        "the served document should be docs/openapi.yaml"
    );
    for path in [
        "/:",
        "/metrics:",
        "/insert:",
        "/events:",
        "/collection/{event}:",
        "/health:",
        "/openapi.yaml:",
    ] {
        assert!(
            document.contains(&format!("\n  {path}\n")),
            "docs/openapi.yaml should describe {path}"
        );
    }
}
