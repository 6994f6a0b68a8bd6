//! `oxmesh analyze PATH...`: validation plus Istio's cross-object analyzers, printed
//! as `istioctl analyze` prints them.

use std::path::PathBuf;
use std::process::ExitCode;

use oxmesh_config::analysis::{self, Level, Message, Suppression};
use oxmesh_config::{Severity, load};

/// istioctl's exit status when analyzers found problems at the failure threshold.
const ISSUES_FOUND: u8 = 79;

#[derive(clap::Args)]
pub struct Args {
    /// Files or directories (read recursively: *.yaml, *.yml, *.json).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "log")]
    output: Format,
    /// Hide a message: CODE=RESOURCE, e.g. `IST0102=Namespace default` or
    /// `IST0101=VirtualService bookinfo/*` (`*` matches anything). Repeatable.
    #[arg(short = 'S', long = "suppress", value_name = "CODE=RESOURCE")]
    suppress: Vec<Suppression>,
    /// Exit 79 when a message is at least this severe.
    #[arg(long, default_value = "Error", value_parser = level)]
    failure_threshold: Level,
    /// Print only messages at least this severe.
    #[arg(long, default_value = "Info", value_parser = level)]
    output_threshold: Level,
    /// Report only on objects in this namespace (default: every namespace).
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Log,
    Json,
    Yaml,
}

fn level(text: &str) -> Result<Level, String> {
    Level::parse(text).ok_or_else(|| format!("{text:?} is not Error, Warning or Info"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    for s in args.suppress.iter().filter(|s| !s.known_code()) {
        eprintln!(
            "Warning: Supplied message code '{}' is an unknown message code and will not have any effect.",
            s.code()
        );
    }
    let loaded = load::load_paths(&args.paths);
    let unreadable: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.object.is_none() && d.severity == Severity::Error)
        .collect();
    for d in &unreadable {
        eprintln!("{d}");
    }
    let messages: Vec<Message> =
        analysis::analyze(&loaded.objects, &loaded.diagnostics, &Default::default())
            .into_iter()
            .filter(|m| {
                args.namespace.as_deref().is_none_or(|ns| {
                    m.object
                        .as_ref()
                        .and_then(|o| o.namespace.as_deref())
                        .is_none_or(|n| n == ns)
                })
            })
            .filter(|m| !args.suppress.iter().any(|s| s.suppresses(m)))
            .collect();
    let shown: Vec<&Message> = messages
        .iter()
        .filter(|m| m.level() <= args.output_threshold)
        .collect();
    print(&shown, args.output)?;
    let failed = messages.iter().any(|m| m.level() <= args.failure_threshold);
    if messages.is_empty() && unreadable.is_empty() {
        eprintln!(
            "\u{2714} No validation issues found when analyzing {}.",
            args.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(if !unreadable.is_empty() {
        ExitCode::FAILURE
    } else if failed {
        ExitCode::from(ISSUES_FOUND)
    } else {
        ExitCode::SUCCESS
    })
}

fn print(messages: &[&Message], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Log => {
            for m in messages {
                println!("{m}");
            }
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(&structured(messages))?),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&structured(messages))?),
    }
    Ok(())
}

/// The fields istioctl's JSON and YAML carry.
fn structured(messages: &[&Message]) -> serde_json::Value {
    messages
        .iter()
        .map(|m| {
            let mut entry = serde_json::json!({
                "code": m.code.id(),
                "documentationUrl": m.code.documentation_url(),
                "level": m.level().to_string(),
                "message": m.text,
            });
            if let Some(object) = &m.object {
                entry["origin"] = object.to_string().into();
            }
            if let Some(origin) = &m.origin {
                entry["reference"] = origin.to_string().into();
            }
            entry
        })
        .collect()
}
