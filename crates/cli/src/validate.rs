//! `oxmesh validate PATH...`

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use oxmesh_config::{Loaded, Severity, load};

#[derive(clap::Args)]
pub struct Args {
    /// Files or directories (read recursively: *.yaml, *.yml, *.json); `-` for stdin.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Hide info lines, such as objects of kinds the mesh does not read.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (stdin, files): (Vec<PathBuf>, Vec<PathBuf>) =
        args.paths.into_iter().partition(|p| p.as_os_str() == "-");
    let mut loaded = load::load_paths(&files);
    if !stdin.is_empty() {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        let from_stdin = load::load_bytes(Path::new("<stdin>"), &bytes);
        loaded.objects.extend(from_stdin.objects);
        loaded.diagnostics.extend(from_stdin.diagnostics);
    }
    report(&loaded, args.quiet)?;
    Ok(if loaded.has_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn report(loaded: &Loaded, quiet: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for diagnostic in &loaded.diagnostics {
        if quiet && diagnostic.severity == Severity::Info {
            continue;
        }
        writeln!(out, "{diagnostic}")?;
    }
    let count = |s| {
        loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == s)
            .count()
    };
    eprintln!(
        "{} valid objects, {} errors, {} warnings",
        loaded.objects.len(),
        count(Severity::Error),
        count(Severity::Warning)
    );
    Ok(())
}
