//! `observer man`: manual pages written from the clap definition itself, so that they list every
//! option the binary takes and no other. One page for `observer` (its options and the list of
//! subcommands), and one per subcommand, named as man expects a subcommand's page
//! (`observer-trace(1)`, which the first page refers to).
#![forbid(unsafe_code)]
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Command;
use clap_mangen::Man;

/// Every page: `cmd`'s first, then one per subcommand (and theirs), in clap's order. clap's own
/// `help` subcommand gets none, and is not listed: `--help` is on every page.
pub fn pages(cmd: Command) -> Vec<Man> {
    fn walk(cmd: &Command, source: &str, pages: &mut Vec<Man>) {
        pages.push(Man::new(cmd.clone()).source(source));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, source, pages);
        }
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    // Built, each subcommand knows its page's name (`observer-trace`) and the global options.
    cmd.build();
    // Every page's footer names the program and its version (a subcommand has no version).
    let source = format!("{} {}", cmd.get_name(), cmd.get_version().unwrap_or_default());
    let mut pages = Vec::new();
    walk(&cmd, source.trim_end(), &mut pages);
    pages
}

/// The names a page may be asked for by: the subcommands' (`trace`).
pub fn subcommand_names(cmd: &Command) -> Vec<String> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help").map(|s| s.get_name().to_owned()).collect()
}

/// The page of `subcommand` (`trace`: observer-trace(1)), or `cmd`'s own.
pub fn page(cmd: Command, subcommand: Option<&str>) -> Result<Man> {
    let name = match subcommand {
        Some(s) => format!("{}-{s}.1", cmd.get_name()),
        None => format!("{}.1", cmd.get_name()),
    };
    pages(cmd).into_iter().find(|p| p.get_filename() == name).with_context(|| format!("no manual page {name}"))
}

/// Writes every page into `dir` (made if missing) as NAME.1; returns their paths.
pub fn write_pages(cmd: Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    pages(cmd)
        .into_iter()
        .map(|p| {
            let name = p.get_filename();
            p.generate_to(dir).with_context(|| format!("writing {}", dir.join(&name).display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn render(p: &Man) -> String {
        let mut out = Vec::new();
        p.render(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// How roff writes an option's name in an OPTIONS section (`\-\-local\-port`).
    fn roff(flag: &str) -> String {
        flag.replace('-', "\\-")
    }

    #[test]
    fn every_subcommand_gets_a_page_with_its_own_options() {
        let cmd = crate::command::Cli::command();
        let names = subcommand_names(&cmd);
        assert!(names.len() >= 8 && names.iter().any(|n| n == "trace") && !names.iter().any(|n| n == "help"), "{names:?}");
        let pages = pages(cmd.clone());
        let files: Vec<String> = pages.iter().map(Man::get_filename).collect();
        let expected: Vec<String> = std::iter::once("observer.1".to_owned()).chain(names.iter().map(|n| format!("observer-{n}.1"))).collect();
        assert_eq!(files, expected);
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = sub.get_name();
            let text = render(&page(crate::command::Cli::command(), Some(name)).unwrap());
            assert!(text.contains(&format!("\n.TH observer-{name} 1  \"observer {}\"", env!("CARGO_PKG_VERSION"))), "{name}:\n{text}");
            // Its own options and arguments, and the global ones.
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let shown = match arg.get_long() {
                    Some(long) => roff(&format!("--{long}")),
                    None => arg.get_value_names().and_then(|v| v.first()).map_or_else(|| arg.get_id().to_string(), |v| v.to_string()),
                };
                assert!(text.contains(&shown), "observer-{name}(1) lacks {shown}:\n{text}");
            }
            assert!(text.contains(&roff("--utc")), "observer-{name}(1) lacks the global --utc");
        }
        // Options are on their subcommand's page only.
        let trace = render(&page(crate::command::Cli::command(), Some("trace")).unwrap());
        assert!(trace.contains(&roff("--status")) && !trace.contains(&roff("--state-dir")), "{trace}");
        let run = render(&page(crate::command::Cli::command(), Some("run")).unwrap());
        assert!(run.contains(&roff("--state-dir")) && !run.contains(&roff("--status")), "{run}");
        assert!(page(crate::command::Cli::command(), Some("nonsense")).is_err());
    }

    #[test]
    fn the_first_page_lists_only_subcommands_that_have_a_page() {
        let text = render(&page(crate::command::Cli::command(), None).unwrap());
        assert!(text.contains("\n.TH observer 1 "), "{text}");
        for name in subcommand_names(&crate::command::Cli::command()) {
            assert!(text.contains(&format!("observer\\-{name}(1)")), "the first page lacks {name}:\n{text}");
        }
        assert!(!text.contains("observer\\-help(1)"), "{text}");
    }

    #[test]
    fn every_page_is_written_into_the_directory() {
        let dir = std::env::temp_dir().join(format!("observer-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let written = write_pages(crate::command::Cli::command(), &dir.join("man1")).unwrap();
        let mut on_disk: Vec<String> = std::fs::read_dir(dir.join("man1")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        on_disk.sort();
        let mut expected: Vec<String> = std::iter::once("observer.1".to_owned())
            .chain(subcommand_names(&crate::command::Cli::command()).iter().map(|n| format!("observer-{n}.1")))
            .collect();
        expected.sort();
        assert_eq!(on_disk, expected);
        assert_eq!(written.len(), expected.len());
        for path in &written {
            let text = std::fs::read_to_string(path).unwrap();
            let stem = path.file_stem().unwrap().to_str().unwrap();
            assert!(text.contains(&format!("\n.TH {stem} 1 ")), "{}:\n{text}", path.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
