//! An application server's view: every "page" needs an answer from four backend services, asked
//! concurrently over warm keepalive connections, and merged.
//!
//! ```text
//! cargo run --release -p upkeep-smol --example fanout -- [--pages N] [ADDR ADDR ADDR ADDR]
//! ```
//!
//! Without addresses it starts four loopback backends of its own. It prints the first pages'
//! merged answers, then how many upstream connections the client opened for all of them.

use std::time::Instant;

use smol::LocalExecutor;
use upkeep_core::Address;
use upkeep_core::config::{ServerConfig, UpstreamConfig};
use upkeep_smol::{Client, Request};

#[path = "support/backend.rs"]
mod backend;

const SERVICES: [&str; 4] = ["profile", "inventory", "pricing", "reviews"];

/// Renders one page: the four calls are spawned together, so they are in flight at once.
async fn render(ex: &LocalExecutor<'_>, client: &Client, page: usize) -> Result<String, String> {
    let calls: Vec<_> = SERVICES
        .iter()
        .map(|&service| {
            let client = client.clone();
            ex.spawn(async move {
                let r = client
                    .send(service, Request::get(format!("/page/{page}")))
                    .await
                    .map_err(|e| format!("{service}: {e}"))?;
                let status = r.status();
                let body = r.bytes().await.map_err(|e| format!("{service}: {e}"))?;
                if status != 200 {
                    return Err(format!("{service}: status {status}"));
                }
                Ok(String::from_utf8_lossy(&body).into_owned())
            })
        })
        .collect();
    let mut parts = Vec::new();
    for call in calls {
        parts.push(call.await?);
    }
    Ok(format!("page {page}: [{}]", parts.join(" | ")))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut pages = 100usize;
    let mut addrs = Vec::new();
    use lexopt::ValueExt;
    let mut args = lexopt::Parser::from_env();
    while let Some(arg) = args.next()? {
        match arg {
            lexopt::Arg::Long("pages") => pages = args.value()?.parse()?,
            lexopt::Arg::Value(v) => addrs.push(
                Address::parse(v.to_str().ok_or("address is not UTF-8")?)
                    .map_err(|e| e.to_string())?,
            ),
            other => return Err(other.unexpected().into()),
        }
    }
    let mut own = Vec::new();
    if addrs.is_empty() {
        for s in SERVICES {
            let b = backend::Backend::start(s)?;
            addrs.push(Address::Tcp(b.addr));
            own.push(b);
        }
    }
    if addrs.len() != SERVICES.len() {
        return Err(format!("give {} backend addresses (or none)", SERVICES.len()).into());
    }
    let client = Client::new(
        SERVICES
            .iter()
            .zip(addrs)
            .map(|(s, a)| UpstreamConfig::new(*s, vec![ServerConfig::new(a)])),
    )?;

    let ex = LocalExecutor::new();
    let started = Instant::now();
    smol::block_on(ex.run(async {
        for page in 0..pages {
            let merged = render(&ex, &client, page).await?;
            if page < 5 {
                println!("{merged}");
            }
        }
        Ok::<(), String>(())
    }))?;
    let elapsed = started.elapsed();
    let opened = smol::block_on(client.connections_opened())?;
    println!(
        "{pages} pages x {} services = {} requests in {:.3} s; upstream connections opened: {opened}",
        SERVICES.len(),
        pages * SERVICES.len(),
        elapsed.as_secs_f64()
    );
    if !own.is_empty() {
        let accepted: Vec<usize> = own.iter().map(|b| b.accepted()).collect();
        println!("connections accepted per backend: {accepted:?}");
    }
    Ok(())
}
