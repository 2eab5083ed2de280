//! The manual (README.md and docs/*.md) stays true to the repository and to the binary:
//! every relative link leads to a file (and its `#anchor` to a heading), every
//! `edge-agent …` command shown in a shell block is one the binary accepts, every
//! `edge-agent …` named in the text is a real subcommand, and every complete config
//! example (one with `[gateway]`) is accepted by the config loader.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root (this file is in `tests/`, the package in `agent/`).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("agent/ has a parent")
}

/// README.md and every docs/*.md, as (path relative to the root, text).
fn pages() -> Vec<(PathBuf, String)> {
    let mut paths = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("a docs/ directory")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(root()).expect("under the root").to_path_buf())
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(root().join(&p)).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (p, text)
        })
        .collect()
}

/// One fenced code block: its language word and its lines.
struct Block {
    lang: String,
    body: Vec<String>,
}

/// Splits a page into its prose (fenced lines blanked out) and its fenced blocks. Fences may
/// be indented (a block inside a list item).
fn split(text: &str) -> (Vec<String>, Vec<Block>) {
    let (mut prose, mut blocks) = (Vec::new(), Vec::new());
    let mut open: Option<Block> = None;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&mut open, fence) {
            (None, true) => {
                open = Some(Block { lang: line.trim_start().trim_start_matches('`').trim().to_string(), body: Vec::new() });
                prose.push(String::new());
            }
            (Some(_), true) => {
                blocks.extend(open.take());
                prose.push(String::new());
            }
            (Some(b), false) => {
                b.body.push(line.to_string());
                prose.push(String::new());
            }
            (None, false) => prose.push(line.to_string()),
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    (prose, blocks)
}

/// A heading's anchor as GitHub makes it: lower case, punctuation dropped (except `-` and
/// `_`), spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings; a repeated heading gets `-1`, `-2`… as on GitHub.
fn anchors(text: &str) -> BTreeSet<String> {
    let (prose, _) = split(text);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for line in &prose {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// `line` with its inline code spans replaced by `code` (so that a `](` inside code is not
/// taken for a link, while a link whose text is code is still found).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + ticks..];
        match after.find(&"`".repeat(ticks)) {
            Some(end) => {
                out.push_str("code");
                rest = &after[end + ticks..];
            }
            None => {
                out.push_str(&rest[start..start + ticks]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The inline code spans of `line`.
fn code_spans(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + ticks..];
        match after.find(&"`".repeat(ticks)) {
            Some(end) => {
                out.push(after[..end].trim().to_string());
                rest = &after[end + ticks..];
            }
            None => rest = after,
        }
    }
    out
}

/// The targets of the Markdown links `[text](target)` in a page's prose, with their line.
fn links(text: &str) -> Vec<(usize, String)> {
    let (prose, _) = split(text);
    let mut out = Vec::new();
    for (i, line) in prose.iter().enumerate() {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let target = &rest[at + 2..];
            let end = target.find(')').unwrap_or(target.len());
            let target = target[..end].trim();
            // `[a](b "title")`: the target is the first word.
            out.push((i + 1, target.split_whitespace().next().unwrap_or_default().to_string()));
            rest = &rest[at + 2..];
        }
    }
    out
}

#[test]
fn every_relative_link_of_the_manual_leads_to_a_file_and_every_anchor_to_a_heading() {
    // Given every page of the manual
    let pages = pages();
    assert!(pages.len() >= 10, "the manual has its pages: {:?}", pages.iter().map(|p| &p.0).collect::<Vec<_>>());
    let mut checked = 0;
    let mut broken = Vec::new();

    for (page, text) in &pages {
        for (line, target) in links(text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            // When its link is resolved against the page's directory
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() { page.clone() } else { page.parent().unwrap_or(Path::new("")).join(path) };
            let file = normalise(&file);
            checked += 1;
            let on_disk = root().join(&file);
            if !on_disk.exists() {
                broken.push(format!("{}:{line}: {target}: no file {}", page.display(), file.display()));
                continue;
            }
            // Then the file is there, and the anchor is one of its headings
            if !anchor.is_empty() && file.extension().is_some_and(|e| e == "md") {
                let headings = anchors(&std::fs::read_to_string(&on_disk).unwrap_or_default());
                if !headings.contains(anchor) {
                    broken.push(format!("{}:{line}: {target}: no heading #{anchor} in {}", page.display(), file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 50, "only {checked} relative links found: is the link scanner still reading the pages?");
}

/// `a/../b/./c` → `b/c`, without touching the disk.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn the_readme_links_every_page_of_the_manual_among_them_install_on_a_gateway() {
    // Given the README and the pages in docs/
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let expected: BTreeSet<String> = pages().into_iter().skip(1).map(|(p, _)| p.display().to_string()).collect();
    let linked: BTreeSet<String> = links(&readme).into_iter().map(|(_, t)| t.split('#').next().unwrap_or_default().to_string()).collect();

    // Then the README links each of them
    let missing: Vec<&String> = expected.iter().filter(|p| !linked.contains(*p)).collect();
    assert!(missing.is_empty(), "pages the README does not link: {missing:?}");
    // And "Install on a gateway" is one link, to docs/install.md
    assert!(readme.contains("[Install on a gateway](docs/install.md)"), "the README links \"Install on a gateway\" to docs/install.md");
    // And the reference no longer lives in the README: it is the front page
    assert!(readme.lines().count() < 300, "the README is the front page, not the reference ({} lines)", readme.lines().count());
}

/// Splits a shell command into words, honouring single and double quotes.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    words
}

/// The `edge-agent` arguments of each command in the page's shell blocks (`sh`, `bash`,
/// `shell`; the `$ ` lines of `console`): a line (with its
/// `\` continuations) is cut at `#` comments and at `&&`, `||`, `;` and `|`; a command that
/// runs the binary (`edge-agent …`, `/usr/bin/edge-agent …`, after `VAR=value` and `sudo
/// [-u USER]`, or `cargo run -p edge-agent -- …`) gives its arguments.
fn agent_commands(text: &str) -> Vec<(String, Vec<String>)> {
    let (_, blocks) = split(text);
    let mut out = Vec::new();
    for block in blocks.iter().filter(|b| matches!(b.lang.as_str(), "sh" | "bash" | "shell" | "console")) {
        // In a `console` block only the `$ ` lines are commands; the rest is their output.
        let console = block.lang == "console";
        let joined = block.body.join("\n").replace("\\\n", " ");
        for line in joined.lines() {
            let line = line.trim();
            if console && !line.starts_with("$ ") {
                continue;
            }
            let line = line.trim_start_matches("$ ");
            let line = line.split(" #").next().unwrap_or_default();
            if line.starts_with('#') {
                continue;
            }
            for command in line.split("&&").flat_map(|c| c.split("||")).flat_map(|c| c.split(';')).flat_map(|c| c.split(" | ")) {
                let words = shell_words(command);
                let mut rest = words.as_slice();
                while rest.first().is_some_and(|w| w.contains('=') && !w.starts_with('-')) {
                    rest = &rest[1..];
                }
                if rest.first().is_some_and(|w| w == "sudo") {
                    rest = &rest[1..];
                    while let Some(w) = rest.first().filter(|w| w.starts_with('-')) {
                        rest = &rest[if matches!(w.as_str(), "-u" | "-g") { 2 } else { 1 }..];
                    }
                }
                let Some(program) = rest.first() else { continue };
                let args: Vec<String> = if program == "edge-agent" || program.ends_with("/edge-agent") {
                    rest[1..].to_vec()
                } else if program == "cargo"
                    && rest.get(1).is_some_and(|w| w == "run")
                    && rest.windows(2).any(|w| w[0] == "-p" && w[1] == "edge-agent")
                {
                    match rest.iter().position(|w| w == "--") {
                        Some(at) => rest[at + 1..].to_vec(),
                        None => Vec::new(),
                    }
                } else {
                    continue;
                };
                out.push((command.trim().to_string(), args));
            }
        }
    }
    out
}

#[test]
fn every_edge_agent_command_in_a_shell_block_is_one_the_binary_accepts() {
    // Given every command of the manual's shell blocks that runs the agent's binary
    let mut checked = 0;
    let mut refused = Vec::new();
    for (page, text) in pages() {
        for (command, args) in agent_commands(&text) {
            // When the binary parses its arguments (with `--help` after them: clap checks
            // each subcommand, option and value before it, then prints help instead of running)
            let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
                .args(&args)
                .arg("--help")
                .output()
                .unwrap_or_else(|e| panic!("run edge-agent: {e}"));
            checked += 1;
            // Then it accepts them
            if !out.status.success() {
                refused.push(format!("{}: `{command}`:\n{}", page.display(), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
    }
    assert!(refused.is_empty(), "commands of the manual the binary refuses:\n{}", refused.join("\n\n"));
    assert!(checked >= 10, "only {checked} edge-agent commands found in the manual's shell blocks");
}

/// The subcommands listed under `Commands:` in the binary's help for `path`.
fn subcommands(path: &[String]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent")).args(path).arg("--help").output().expect("run edge-agent --help");
    assert!(out.status.success(), "edge-agent {} --help fails", path.join(" "));
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    help.split_once("Commands:\n")
        .map(|(_, list)| {
            list.lines().take_while(|l| !l.trim().is_empty()).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_edge_agent_subcommand_named_in_the_text_exists() {
    // Given every `edge-agent …` code span in the manual's prose (tables included)
    let mut checked = 0;
    let mut unknown = Vec::new();
    for (page, text) in pages() {
        let (prose, _) = split(&text);
        for span in prose.iter().flat_map(|l| code_spans(l)) {
            let Some(rest) = span.strip_prefix("edge-agent ") else { continue };
            // When its words are followed down the binary's subcommands, up to the first
            // option, placeholder or argument
            let mut path: Vec<String> = Vec::new();
            for word in rest.split_whitespace() {
                let known = subcommands(&path);
                if known.is_empty() || !word.chars().all(|c| c.is_ascii_lowercase() || c == '-') || word.starts_with('-') {
                    break;
                }
                checked += 1;
                // Then each is a subcommand of the one before
                if !known.iter().any(|k| k == word) {
                    unknown.push(format!(
                        "{}: `{span}`: `{word}` is not a subcommand of `edge-agent {}` ({known:?})",
                        page.display(),
                        path.join(" ")
                    ));
                    break;
                }
                // (`help` is clap's: what follows it is a subcommand name, not its subcommand)
                if word == "help" {
                    break;
                }
                path.push(word.to_string());
            }
        }
    }
    assert!(unknown.is_empty(), "unknown subcommands in the manual:\n{}", unknown.join("\n"));
    assert!(checked >= 20, "only {checked} subcommand names found in the manual's text");
}

#[test]
fn every_complete_config_example_of_the_manual_is_accepted() {
    // Given every ```toml block of the manual that is a whole config (it has [gateway])
    let mut checked = 0;
    for (page, text) in pages() {
        let (_, blocks) = split(&text);
        for block in blocks.iter().filter(|b| b.lang == "toml" && b.body.iter().any(|l| l.trim() == "[gateway]")) {
            // When it is loaded and checked as `check-config` does
            let config = block.body.join("\n");
            let name = page.display().to_string();
            // Then it is accepted
            edge_agent::config::load_str(&config, &name).unwrap_or_else(|e| panic!("a config example of {name} is refused:\n{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 1, "no complete config example ([gateway]) found in the manual");
}
