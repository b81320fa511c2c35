//! The configuration reference (`docs/configuration.md`), generated from the command lines the
//! binaries parse, so it cannot drift from them: every flag of every binary with its environment
//! variable, default and help text, and the variables telemetry reads by name.
//! `ordermesh config-reference` prints it; `runner/tests/config_reference.rs` fails when the file
//! and the code differ.

use std::fmt::Write;

use clap::{Arg, Command, CommandFactory};
use ordermesh_platform::cli;

use crate::cli::Cli;

/// The whole reference, as Markdown.
pub fn render() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the binaries' own flag definitions by\n\
         `cargo run --bin ordermesh -- config-reference > docs/configuration.md`;\n\
         `runner/tests/config_reference.rs` fails when this file and the code differ. A flag wins\n\
         over its variable, a variable over the default. The runner reads every service's variables\n\
         too (it starts each service with the settings its binary would have), and turns fault\n\
         injection on unless `PAYMENT_FAULTS_ENABLED` and `ORDER_FORWARD_FAULT_HEADERS` say\n\
         otherwise. Every binary checks its settings before it binds, connects or migrates, and\n\
         names the setting to change.\n",
    );
    for (title, command) in [
        (
            "`payment`",
            cli::command::<ordermesh_payment::Config, cli::NoCommands>(),
        ),
        (
            "`order`",
            cli::command::<ordermesh_order::Config, cli::NoCommands>(),
        ),
        (
            "`notifier`",
            cli::command::<ordermesh_notifier::Config, ordermesh_notifier::Command>(),
        ),
        ("`ordermesh`, the runner", Cli::command()),
    ] {
        let _ = write!(out, "\n## {title}\n\n{}\n\n", about(&command));
        table(&mut out, &rows(&command, ""));
    }
    out.push_str(
        "\n## Read by name by every binary\n\n\
         Logging and the standard OpenTelemetry variables, read from the environment only.\n\n",
    );
    let telemetry: Vec<[String; 4]> = ordermesh_platform::telemetry::VARIABLES
        .iter()
        .map(|v| {
            [
                format!("`{}`", v.name),
                "—".to_owned(),
                v.default.to_owned(),
                v.meaning.to_owned(),
            ]
        })
        .collect();
    table(&mut out, &telemetry);
    out
}

fn about(command: &Command) -> String {
    command
        .get_about()
        .map(|about| about.to_string())
        .unwrap_or_default()
}

/// One row per argument of `command` and of its subcommands (their flags shown after the
/// subcommand's name), in definition order; clap's own `--help` and `--version` left out.
fn rows(command: &Command, prefix: &str) -> Vec<[String; 4]> {
    let mut rows = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_hide_set() || id == "help" || id == "version" {
            continue;
        }
        rows.push([
            arg.get_env().map_or("—".to_owned(), |env| {
                format!("`{}`", env.to_string_lossy())
            }),
            arg.get_long()
                .map_or("—".to_owned(), |long| format!("`{prefix}--{long}`")),
            default(arg),
            meaning(arg),
        ]);
    }
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        rows.extend(rows_of_subcommand(sub, prefix));
    }
    rows
}

fn rows_of_subcommand(sub: &Command, prefix: &str) -> Vec<[String; 4]> {
    rows(sub, &format!("{prefix}{} ", sub.get_name()))
}

fn default(arg: &Arg) -> String {
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if values.is_empty() {
        "unset".to_owned()
    } else {
        format!("`{}`", values.join(","))
    }
}

/// The argument's help on one line, with its choices when it has a fixed set of values.
fn meaning(arg: &Arg) -> String {
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|help| help.to_string())
        .unwrap_or_default();
    let mut text = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let choices: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    // A yes/no setting's choices say nothing its help does not.
    if !choices.is_empty() && choices != ["`true`", "`false`"] {
        if !text.is_empty() && !text.ends_with('.') {
            text.push('.');
        }
        let _ = write!(text, " One of {}.", choices.join(", "));
    }
    text.trim().to_owned()
}

fn table(out: &mut String, rows: &[[String; 4]]) {
    out.push_str("| Variable | Flag | Default | Meaning |\n|---|---|---|---|\n");
    for row in rows {
        let cells: Vec<String> = row.iter().map(|cell| cell.replace('|', "\\|")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}
