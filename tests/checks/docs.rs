//! The docs read as a map: the README stays short and links every page in `docs/`, and every link
//! between them (and into the sources) leads somewhere, to a heading that exists.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context, Result, ensure};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The README, the service crates' READMEs and every page in docs/, as paths relative to the
/// repository.
fn pages() -> Result<Vec<String>> {
    let mut pages: Vec<String> = [
        "README.md",
        "order/README.md",
        "payment/README.md",
        "notifier/README.md",
    ]
    .map(str::to_owned)
    .into();
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    pages.sort();
    Ok(pages)
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// The `[text](target)` links of a page outside code blocks and spans, web links left out.
fn links(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Code spans can hold `](` that is no link.
        let outside: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for rest in outside.split("](").skip(1) {
            if let Some(end) = rest.find(')') {
                let target = &rest[..end];
                if !target.starts_with("http://") && !target.starts_with("https://") {
                    out.push(target.to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn every_link_in_the_docs_leads_to_a_file_and_heading_that_exist() -> Result<()> {
    let mut checked = 0;
    for page in pages()? {
        let text = std::fs::read_to_string(Path::new(ROOT).join(&page))?;
        let dir = Path::new(&page).parent().unwrap_or(Path::new(""));
        for link in links(&text) {
            let (file, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                Path::new(&page).to_owned()
            } else {
                dir.join(file)
            };
            let path = Path::new(ROOT).join(&target);
            ensure!(path.exists(), "{page}: the link {link} leads nowhere");
            if !fragment.is_empty() {
                let target_text =
                    std::fs::read_to_string(&path).with_context(|| format!("{page}: {link}"))?;
                ensure!(
                    anchors(&target_text).contains(fragment),
                    "{page}: the link {link} names a heading {} does not have",
                    target.display()
                );
            }
            checked += 1;
        }
    }
    ensure!(checked >= 15, "found the links: {checked}");
    Ok(())
}

#[test]
fn the_readme_is_short_and_maps_every_page() -> Result<()> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md"))?;
    let lines = readme.lines().count();
    ensure!(
        lines <= 250,
        "README.md has {lines} lines: keep it to what it is, the quick start, the test command and \
         the map; the rest belongs in docs/"
    );
    for page in pages()?.iter().filter(|p| p.starts_with("docs/")) {
        ensure!(
            readme.contains(&format!("]({page})")),
            "README.md's map does not link {page}"
        );
    }
    Ok(())
}
