//! An agent loop over sandpool's public gRPC API: create a sandbox, give it
//! a file, run commands in it (as an agent's tool calls would), read a
//! result back, delete it.
//!
//! ```sh
//! SANDPOOL_URL=http://127.0.0.1:8080 SANDPOOL_API_KEY=... SANDPOOL_POOL=default \
//!   cargo run -p sandpool-client --example agent_loop
//! ```

use sandpool_client::{Client, Create};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("SANDPOOL_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let key = std::env::var("SANDPOOL_API_KEY").ok();
    let pool = std::env::var("SANDPOOL_POOL").unwrap_or_else(|_| "default".into());
    let client = Client::connect(&url, key.as_deref()).await?;

    let sb = client.create(Create::pool(&pool).timeout(300)).await?;
    println!("sandbox {}", sb.id());

    // the "model" writes a script, then runs it step by step
    let script = b"#!/bin/sh\necho \"step $1: $(( $1 * $1 ))\" | tee -a /tmp/agent/log.txt\n";
    sb.write_file("/tmp/agent/step.sh", script).await?;
    for step in 1..=3 {
        let out = sb.exec(&format!("sh /tmp/agent/step.sh {step}")).await?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        anyhow::ensure!(out.exit_code == 0, "step {step} failed: {out:?}");
    }
    let log = sb.read_file("/tmp/agent/log.txt").await?;
    println!(
        "log has {} lines",
        log.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count()
    );

    sb.delete().await?;
    println!("deleted");
    Ok(())
}
