//! The docs are executable documentation: every `grpcurl` and `kcat` command in the `sh` blocks of
//! the README and of every page in `docs/` is run, as written, against a running mesh, in reading
//! order (the README, the walkthrough, the failure modes, then the other pages). Only the addresses
//! and the topic are swapped for this test's own (it runs on port 0, beside other tests).

use anyhow::{Context, Result};
use ordermesh_testkit::{Backend, on_both_backends};

use super::{
    support::helpers::spawn_mesh,
    support::shell::{sh, tool},
};

/// The pages to read, in order: the README and the walkthrough first (they place the first
/// orders), then the failure modes, then every other page in `docs/`, so a new page is never
/// left out.
fn pages() -> Result<Vec<std::path::PathBuf>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let first = ["README.md", "docs/walkthrough.md", "docs/failure-modes.md"].map(|p| root.join(p));
    let mut rest: Vec<_> = std::fs::read_dir(root.join("docs"))?
        .map(|entry| Ok(entry?.path()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md") && !first.contains(p))
        .collect();
    rest.sort();
    Ok(first.into_iter().chain(rest).collect())
}

/// The commands of the docs' `sh` blocks that start with `grpcurl` or `kcat`, with backslash
/// continuations joined.
fn doc_commands() -> Result<Vec<String>> {
    let mut commands = Vec::new();
    for page in pages()? {
        let text =
            std::fs::read_to_string(&page).with_context(|| format!("read {}", page.display()))?;
        commands.extend(commands_in(&text));
    }
    Ok(commands)
}

/// The `grpcurl` and `kcat` commands of one page's `sh` blocks.
fn commands_in(readme: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(trimmed);
        let command = std::mem::take(&mut pending);
        if command.starts_with("grpcurl ") || command.starts_with("kcat ") {
            commands.push(command);
        }
    }
    commands
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_in_the_docs_runs_as_written(backend: Backend) -> Result<()> {
    let commands = doc_commands()?;
    assert!(
        commands.len() >= 8,
        "the docs have their commands: {commands:#?}"
    );
    let (Some(_), Some(_)) = (tool("grpcurl")?, tool("kcat")?) else {
        return Ok(());
    };
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let order = mesh.order_addr()?.to_string();
    let swap = |command: &str| {
        command
            .replace("127.0.0.1:50051", &order)
            .replace(
                "127.0.0.1:50052",
                &mesh
                    .payment
                    .as_ref()
                    .map(|p| p.addr.to_string())
                    .unwrap_or_default(),
            )
            .replace(
                "127.0.0.1:50053",
                &mesh
                    .notifier
                    .as_ref()
                    .map(|p| p.addr.to_string())
                    .unwrap_or_default(),
            )
            .replace("127.0.0.1:9092", &mesh.broker.bootstrap_servers())
            .replace("order-events", &mesh.topic)
    };

    let mut transcript = Vec::new();
    for command in &commands {
        if command.contains("ListNotifications") {
            // The walkthrough shows them after placing orders; give the consumers time to get there.
            mesh.wait_for_notifications(2).await?;
        }
        // Commands that demonstrate an error (declined payment, bad input) end in `|| true`.
        let output = sh(&swap(command))
            .await
            .with_context(|| format!("docs command: {command}"))?;
        transcript.push(output);
    }

    let all = transcript.join("\n");
    for expected in [
        "ordermesh.order.v1.OrderService",
        "SERVING",
        "ORDER_STATUS_PAID",
        "ORDER_STATUS_CANCELLED",
        "PAYMENT_STATUS_REFUNDED",
        "ordermesh.events.v1.OrderPlaced",
        "CHANNEL_EMAIL",
        "CHANNEL_SMS",
    ] {
        assert!(all.contains(expected), "the docs show {expected}:\n{all}");
    }
    mesh.shutdown().await
}
