//! Runs Broker inside your own tokio program, with axum and redb.
//!
//! ```sh
//! cargo run --example tokio_axum
//! curl -N http://127.0.0.1:3000/events
//! ```

use std::net::SocketAddr;

use broker::{Broker, Config, NewEvent};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::default().with_data_dir("./tmp/example");
    let broker = Broker::open(config).await?;

    // The program itself can publish: here a countdown that becomes current
    // ten seconds from now, and a greeting that is current at once.
    let in_ten_seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 10;
    broker
        .insert(NewEvent::new("countdown", &json!({"done": true}))?.at(in_ten_seconds)?)
        .await?;
    broker
        .insert(NewEvent::new("greeting", &json!({"text": "hello"}))?)
        .await?;

    let addr = SocketAddr::from(([127, 0, 0, 1], 3000));
    println!("serving on http://{addr}; Ctrl-C stops");
    broker
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
