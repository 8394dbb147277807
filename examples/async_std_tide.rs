//! Runs Broker inside your own async-std program, with tide and sled.
//!
//! ```sh
//! cargo run --example async_std_tide --no-default-features --features async-std-tide,sled
//! curl -N http://127.0.0.1:3000/events
//! ```

use std::net::SocketAddr;

use broker::{Broker, Config, NewEvent, StorageKind};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    async_std::task::block_on(async {
        let config = Config::default()
            .with_data_dir("./tmp/example-async-std")
            .with_storage(StorageKind::Sled);
        let broker = Broker::open(config).await?;

        broker
            .insert(NewEvent::new("greeting", &json!({"text": "hello"}))?)
            .await?;

        // With only the async-std-tide runtime compiled in, Broker::serve
        // runs on tide; broker::async_std_tide::serve picks it explicitly.
        let addr = SocketAddr::from(([127, 0, 0, 1], 3000));
        println!("serving on http://{addr}; stop with Ctrl-C");
        broker::async_std_tide::serve(broker, addr).await?;
        Ok(())
    })
}
