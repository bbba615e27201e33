//! The shape of src/: no circle between modules, and no file over the line limit.
//!
//! A circle (config → media → config) means neither side can be understood, tested or
//! changed alone, so the module graph must stay a DAG, at the level of top-level modules
//! (`config`, `media`, `signalling` …) and of the files within one (`media::pipeline`,
//! `media::probe` …). The graph is read from the source, not from the compiler: every
//! `crate::…`, `super::…` and `self::…` path, in `use` lines and inline, is mapped to the
//! module (file) it names. Comments, strings and test code (from the first `#[cfg(test)]`
//! of a file on) are left out: a doc link or a test helper is not a dependency. A
//! `pub use` re-export is an alias, not a dependency of the module that re-exports: a path
//! through it counts as naming the module the item comes from.
//!
//! One kind of edge is not a dependency either: a *private* child module (`mod calls;`,
//! no `pub`) naming its own parent. Such a child is the parent's file split (the rest of
//! an `impl`, say): nothing outside the parent can reach it, so it is one module in two
//! files, not two modules leaning on each other. A public child naming its parent counts.
//!
//! Run alone: `cargo test --test layering`. It needs no build of peercam itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Circles tolerated for a while, each as the exact set of modules in one strongly
/// connected component: none now. The test fails on any circle not listed here, and on
/// an entry that is no longer a circle, so a list made while a change is under way can
/// only shrink.
const ALLOWED_CYCLES: &[&[&str]] = &[];

/// Lines of non-test code a file under src/ may have (lines before its first
/// `#[cfg(test)]`): past this a file holds more than one responsibility.
const LINE_LIMIT: usize = 600;

/// Files tolerated over [`LINE_LIMIT`] while they are split (paths under src/): none now.
/// As with [`ALLOWED_CYCLES`], an entry whose file is back under the limit fails the test.
const ALLOWED_LONG_FILES: &[&str] = &[];

/// The signalling modules that carry or serve the protocol: the device core speaks in
/// messages, never through these.
const SIGNALLING_IO: &[&str] = &[
    "signalling::client",
    "signalling::connection",
    "signalling::http",
    "signalling::hub",
    "signalling::local",
    "signalling::mailbox",
    "signalling::peerjs",
    "signalling::server",
    "signalling::socket",
    "signalling::transport",
    "signalling::whep",
];

/// The phonebook server's insides, which the device (a client of it) never knows.
const PHONEBOOK_INSIDES: &[&str] = &[
    "signalling::http",
    "signalling::hub",
    "signalling::mailbox",
    "signalling::phonebook",
    "signalling::server",
    "signalling::socket",
    "signalling::whep",
];

/// What a module (and its children) may never reach, directly or through any other
/// module: the "nevers" of DESIGN.md's layers. The device core is pure: it takes its
/// inputs and the time and returns actions, so it reaches no peer, camera, pin or
/// connection (`device::messages` holds its types).
fn nevers() -> Vec<(&'static str, Vec<&'static str>)> {
    let pure_core = || {
        let mut never = vec!["rtc", "media", "gpio", "app", "cli", "systemd", "tls"];
        never.extend(SIGNALLING_IO);
        never
    };
    vec![
        ("device::core", pure_core()),
        ("device::messages", pure_core()),
        ("call", pure_core()),
        ("device", PHONEBOOK_INSIDES.to_vec()),
        ("gpio", vec!["call", "device"]),
        ("media", vec!["rtc", "signalling", "gpio", "device"]),
        (
            "rtc",
            vec!["device", "signalling::phonebook", "signalling::server"],
        ),
    ]
}

/// One library source file.
struct SourceFile {
    /// Path relative to src/, e.g. `media/pipeline.rs`.
    rel: String,
    /// The module it is, e.g. `["media", "pipeline"]`; empty for lib.rs.
    module: Vec<String>,
    /// Its non-test code with comments and literals blanked (newlines kept).
    code: String,
    /// Lines of non-test code.
    lines: usize,
}

/// A dependency found in a file: the path's segments, resolved against the file's
/// module (still to be mapped to a module), and the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathRef {
    segments: Vec<String>,
    line: usize,
    /// True for a `pub use`: an alias other paths go through, not a dependency.
    reexport: bool,
}

/// The module graph: node → (node it depends on → where, as `file:line`).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The modules declared for tests only (`#[cfg(test)]` on the line before `mod tests;`):
/// their files are test code, whatever their length.
fn test_modules(texts: &[(String, String)]) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    for (rel, text) in texts {
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line != "#[cfg(test)]" {
                continue;
            }
            if let Some(name) = lines
                .next()
                .and_then(|l| l.strip_prefix("mod "))
                .and_then(|l| l.strip_suffix(';'))
            {
                let mut module = module_of(rel);
                module.push(name.trim().to_owned());
                found.insert(module);
            }
        }
    }
    found
}

/// The library's files: everything under src/ but the binary (main.rs, src/bin/), which
/// nothing in the library can name and so cannot close a circle, and files of test-only
/// modules.
fn library_files(src: &Path) -> Vec<SourceFile> {
    let mut paths = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    let texts: Vec<(String, String)> = paths
        .into_iter()
        .map(|path| {
            let rel = path
                .strip_prefix(src)
                .expect("under src/")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).expect("a source file is UTF-8");
            (rel, text)
        })
        .collect();
    let tests = test_modules(&texts);
    texts
        .into_iter()
        .filter_map(|(rel, text)| {
            if rel == "main.rs" || rel.starts_with("bin/") || tests.contains(&module_of(&rel)) {
                return None;
            }
            let non_test = non_test_part(&text);
            Some(SourceFile {
                module: module_of(&rel),
                lines: non_test.lines().count(),
                code: blank_comments_and_literals(non_test),
                rel,
            })
        })
        .collect()
}

/// The module a file under src/ is: `lib.rs` → root, `a.rs` and `a/mod.rs` → `a`,
/// `a/b.rs` → `a::b`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The text before the first `#[cfg(test)]` line.
fn non_test_part(text: &str) -> &str {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("#[cfg(test)]") {
            return &text[..offset];
        }
        offset += line.len();
    }
    text
}

/// Replaces comments, string and char literals by spaces, keeping newlines, so that
/// only code is searched for paths and line numbers stay right.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('"') | Some('#')) && !ident_char_before(&chars, i)
        {
            // A raw string r"…" or r#"…"#: ends at a quote followed by as many hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                // `r#ident`, not a string.
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &chars[i..j.min(chars.len())] {
                blank(&mut out, ch);
            }
            i = j;
        } else if c == '"' {
            blank(&mut out, c);
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
            if i < chars.len() {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a), which stays.
            let end = if next == Some('\\') {
                chars[i + 2..]
                    .iter()
                    .position(|&ch| ch == '\'')
                    .map(|p| i + 2 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    for &ch in &chars[i..=end] {
                        blank(&mut out, ch);
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// A token of code: an identifier or keyword, `::`, or one punctuation character.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    line: usize,
}

fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

/// Every path into this crate in a file's code, `use` trees expanded, made absolute
/// (segments from the crate root) against the file's module: those from `crate`, `super`
/// or `self`, and those from a child module of the file (`pipeline::plan` in
/// media/mod.rs), which Rust lets a module name without `self::`.
fn path_refs(code: &str, module: &[String], modules: &BTreeSet<Vec<String>>) -> Vec<PathRef> {
    let toks = tokens(code);
    let mut refs = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i].text == "use" && (i == 0 || toks[i - 1].text != "::") {
            let reexport = is_pub_before(&toks, i);
            let end = toks[i..]
                .iter()
                .position(|t| t.text == ";")
                .map_or(toks.len(), |p| i + p);
            let mut pos = i + 1;
            let mut paths = Vec::new();
            use_tree(&toks[..end], &mut pos, Vec::new(), &mut paths);
            for (segments, line) in paths {
                if let Some(segments) = absolute(&segments, module, modules) {
                    refs.push(PathRef {
                        segments,
                        line,
                        reexport,
                    });
                }
            }
            i = end + 1;
            continue;
        }
        let t = &toks[i].text;
        let starts_path = (matches!(t.as_str(), "crate" | "super" | "self")
            || is_child(module, t, modules))
            && toks.get(i + 1).is_some_and(|n| n.text == "::")
            && (i == 0 || toks[i - 1].text != "::");
        if starts_path {
            let line = toks[i].line;
            let mut segments = vec![t.clone()];
            let mut j = i + 1;
            while j + 1 < toks.len() && toks[j].text == "::" && is_ident(&toks[j + 1].text) {
                segments.push(toks[j + 1].text.clone());
                j += 2;
            }
            if let Some(segments) = absolute(&segments, module, modules) {
                refs.push(PathRef {
                    segments,
                    line,
                    reexport: false,
                });
            }
            i = j;
            continue;
        }
        i += 1;
    }
    refs
}

/// Whether the `use` at `i` is preceded by `pub` or `pub(…)`.
fn is_pub_before(toks: &[Token], i: usize) -> bool {
    match i.checked_sub(1).map(|p| toks[p].text.as_str()) {
        Some("pub") => true,
        Some(")") => {
            // pub(crate), pub(super), pub(in path)
            let open = toks[..i - 1].iter().rposition(|t| t.text == "(");
            open.is_some_and(|o| o > 0 && toks[o - 1].text == "pub")
        }
        _ => false,
    }
}

fn is_ident(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Expands one use tree (`a::b::{c, d::{self, e}}`, `a::*`, `a as b`) from `pos` into
/// its leaf paths with their lines.
fn use_tree(
    toks: &[Token],
    pos: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) {
    let mut path = prefix;
    let mut line = toks.get(*pos).map_or(0, |t| t.line);
    while *pos < toks.len() {
        let t = &toks[*pos];
        match t.text.as_str() {
            "::" => *pos += 1,
            "{" => {
                *pos += 1;
                loop {
                    use_tree(toks, pos, path.clone(), out);
                    match toks.get(*pos).map(|t| t.text.as_str()) {
                        Some(",") => *pos += 1,
                        Some("}") => {
                            *pos += 1;
                            break;
                        }
                        _ => break,
                    }
                    if toks.get(*pos).is_some_and(|t| t.text == "}") {
                        *pos += 1;
                        break;
                    }
                }
                return;
            }
            "," | "}" => break,
            "as" => {
                // The alias names the same thing; skip it.
                *pos += 2;
            }
            "*" => *pos += 1,
            "self" if !path.is_empty() => *pos += 1,
            text if is_ident(text) => {
                line = t.line;
                path.push(text.to_owned());
                *pos += 1;
            }
            _ => *pos += 1,
        }
    }
    if !path.is_empty() {
        out.push((path, line));
    }
}

/// Whether `name` is a child module of `module`.
fn is_child(module: &[String], name: &str, modules: &BTreeSet<Vec<String>>) -> bool {
    let mut child = module.to_vec();
    child.push(name.to_owned());
    modules.contains(&child)
}

/// A path from `crate`, `super`, `self` or a child module made absolute against
/// `module`; `None` for paths into other crates (std, serde …) or names the file brought
/// in itself.
fn absolute(
    segments: &[String],
    module: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let first = segments.first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "super" | "self" => module.to_vec(),
        _ if is_child(module, first, modules) => module.to_vec(),
        _ => return None,
    };
    let mut rest = segments;
    if rest[0] == "crate" {
        rest = &rest[1..];
    }
    while let Some(first) = rest.first() {
        match first.as_str() {
            "super" => {
                base.pop()?;
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The module graph of `files`, with where each edge was seen.
fn module_graph(files: &[SourceFile]) -> Graph {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let refs: Vec<(&SourceFile, PathRef)> = files
        .iter()
        .flat_map(|f| {
            path_refs(&f.code, &f.module, &modules)
                .into_iter()
                .map(move |r| (f, r))
        })
        .collect();
    // Re-exports: (module, name) → the absolute path the name stands for.
    let aliases: BTreeMap<(Vec<String>, String), Vec<String>> = refs
        .iter()
        .filter(|(_, r)| r.reexport)
        .filter_map(|(f, r)| {
            Some((
                (f.module.clone(), r.segments.last()?.clone()),
                r.segments.clone(),
            ))
        })
        .collect();
    let private = private_modules(files);
    // The crate root only declares modules; it is no node of the graph.
    let mut graph = Graph::new();
    for file in files.iter().filter(|f| !f.module.is_empty()) {
        graph.entry(name(&file.module)).or_default();
    }
    for (file, r) in refs
        .iter()
        .filter(|(f, r)| !r.reexport && !f.module.is_empty())
    {
        let Some(target) = resolve(&r.segments, &modules, &aliases) else {
            continue;
        };
        if target.is_empty() || target == file.module {
            continue;
        }
        let parent = &file.module[..file.module.len() - 1];
        if private.contains(&file.module) && target == parent {
            continue;
        }
        graph
            .entry(name(&file.module))
            .or_default()
            .entry(name(&target))
            .or_insert_with(|| format!("src/{}:{}", file.rel, r.line));
    }
    graph
}

/// The modules declared without `pub` (`mod calls;`) by their parent's file.
fn private_modules(files: &[SourceFile]) -> BTreeSet<Vec<String>> {
    let mut private = BTreeSet::new();
    for file in files {
        let toks = tokens(&file.code);
        for i in 0..toks.len() {
            if toks[i].text == "mod"
                && !is_pub_before(&toks, i)
                && toks.get(i + 2).is_some_and(|t| t.text == ";")
                && let Some(name) = toks.get(i + 1).filter(|t| is_ident(&t.text))
            {
                let mut module = file.module.clone();
                module.push(name.text.clone());
                private.insert(module);
            }
        }
    }
    private
}

/// The module an absolute path names: its longest prefix that is a module, followed
/// through re-exports (a bounded number of times: an alias circle is no module).
fn resolve(
    segments: &[String],
    modules: &BTreeSet<Vec<String>>,
    aliases: &BTreeMap<(Vec<String>, String), Vec<String>>,
) -> Option<Vec<String>> {
    let mut path = segments.to_vec();
    for _ in 0..8 {
        let len = (0..=path.len())
            .rev()
            .find(|&n| modules.contains(&path[..n]))?;
        let module = path[..len].to_vec();
        match path
            .get(len)
            .and_then(|n| aliases.get(&(module.clone(), n.clone())))
        {
            Some(target) if *target != path[..=len] => {
                let mut next = target.clone();
                next.extend(path[len + 1..].iter().cloned());
                path = next;
            }
            _ => return Some(module),
        }
    }
    None
}

fn name(module: &[String]) -> String {
    module.join("::")
}

/// The same graph with every module folded into its top-level module.
fn top_level(graph: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_owned();
    let mut out = Graph::new();
    for (from, edges) in graph {
        out.entry(top(from)).or_default();
        for (to, at) in edges {
            if top(from) != top(to) {
                out.entry(top(from))
                    .or_default()
                    .entry(top(to))
                    .or_insert_with(|| format!("{at} ({from} → {to})"));
            }
        }
    }
    out
}

/// The strongly connected components with more than one node (Tarjan): each is a set
/// of modules that all reach each other, i.e. one or more circles.
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<BTreeSet<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, node: &'g str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.graph.get(node).into_iter().flat_map(|e| e.keys()) {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = BTreeSet::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.insert(top.to_owned());
                    if top == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    // Edges may name modules that have no entry of their own; visit those too.
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(from, edges)| {
            std::iter::once(from.as_str()).chain(edges.keys().map(String::as_str))
        })
        .collect();
    for node in nodes {
        if !t.index.contains_key(node) {
            t.visit(node);
        }
    }
    t.found.sort();
    t.found
}

/// One circle through a component, as `a → b (where) → a (where)`, found by a
/// breadth-first search from its first module back to itself.
fn show_cycle(graph: &Graph, component: &BTreeSet<String>) -> String {
    let start = component.iter().next().expect("a component is not empty");
    let mut came_from: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.as_str()]);
    while let Some(node) = queue.pop_front() {
        for (next, at) in graph.get(node).into_iter().flatten() {
            if !component.contains(next) || came_from.contains_key(next.as_str()) {
                continue;
            }
            came_from.insert(next, (node, at));
            if next == start {
                let mut steps = Vec::new();
                let mut at_node = start.as_str();
                loop {
                    let (prev, at) = came_from[at_node];
                    steps.push(format!("→ {at_node} ({at})"));
                    at_node = prev;
                    if at_node == start {
                        break;
                    }
                }
                steps.reverse();
                return format!("{start} {}", steps.join(" "));
            }
            queue.push_back(next);
        }
    }
    format!("{start} (no circle found: a bug in this test)")
}

/// Every circle of `graph` and, folded to top-level modules, of its top level: each
/// component with one circle through it, shown.
fn all_cycles(graph: &Graph) -> Vec<(BTreeSet<String>, String)> {
    let top = top_level(graph);
    let mut found: Vec<(BTreeSet<String>, String)> = Vec::new();
    for g in [graph, &top] {
        for c in cycles(g) {
            if !found.iter().any(|(f, _)| *f == c) {
                let shown = show_cycle(g, &c);
                found.push((c, shown));
            }
        }
    }
    found
}

/// What is wrong with the circles `found` against `allowed`, one line each.
fn cycle_problems(found: &[(BTreeSet<String>, String)], allowed: &[&[&str]]) -> Vec<String> {
    let allowed: Vec<BTreeSet<String>> = allowed
        .iter()
        .map(|c| c.iter().map(|m| m.to_string()).collect())
        .collect();
    let mut problems: Vec<String> = found
        .iter()
        .filter(|(c, _)| !allowed.contains(c))
        .map(|(c, shown)| format!("circle between {c:?}: {shown}"))
        .collect();
    problems.extend(
        allowed
            .iter()
            .filter(|a| !found.iter().any(|(c, _)| c == *a))
            .map(|a| format!("{a:?} is no longer a circle: remove it from ALLOWED_CYCLES")),
    );
    problems
}

#[test]
fn no_circles_between_modules() {
    let files = library_files(&src_dir());
    let graph = module_graph(&files);
    // A reader that found no paths would find no circles: make sure it sees the wiring.
    let edges: usize = graph.values().map(BTreeMap::len).sum();
    assert!(edges > 40, "only {edges} edges found: {graph:#?}");
    assert!(
        graph["app"].contains_key("config"),
        "app → config: {graph:#?}"
    );
    assert!(
        graph["media::pipeline"].contains_key("media::encode"),
        "media::pipeline → media::encode: {graph:#?}"
    );
    let problems = cycle_problems(&all_cycles(&graph), ALLOWED_CYCLES);
    assert!(
        problems.is_empty(),
        "module circles (each edge with the file and line that makes it):\n  {}",
        problems.join("\n  ")
    );
}

/// Whether `node` is `module` or inside it.
fn within(node: &str, module: &str) -> bool {
    node == module
        || node
            .strip_prefix(module)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// The ways `graph` breaks `nevers`, each with the chain of edges (file:line) that does.
fn never_problems(graph: &Graph, nevers: &[(&str, Vec<&str>)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (module, never) in nevers {
        for start in graph.keys().filter(|n| within(n, module)) {
            // Breadth first, so the chain shown is a shortest one.
            let mut came_from: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start.as_str()]);
            let mut seen = BTreeSet::from([start.as_str()]);
            while let Some(node) = queue.pop_front() {
                for (next, place) in graph.get(node).into_iter().flatten() {
                    if seen.insert(next.as_str()) {
                        came_from.insert(next.as_str(), (node, place.as_str()));
                        queue.push_back(next.as_str());
                    }
                }
            }
            for reached in &seen {
                let Some(banned) = never.iter().find(|n| within(reached, n)) else {
                    continue;
                };
                let mut chain = Vec::new();
                let mut at = *reached;
                while let Some((from, place)) = came_from.get(at) {
                    chain.push(format!("{from} → {at} ({place})"));
                    at = from;
                }
                chain.reverse();
                problems.push(format!(
                    "{start} reaches {banned}, which {module} never may: {}",
                    chain.join(", ")
                ));
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

#[test]
fn no_module_reaches_what_its_layer_never_may() {
    let files = library_files(&src_dir());
    let graph = module_graph(&files);
    assert!(
        graph.contains_key("device::core") && graph.contains_key("device::messages"),
        "the device core is where the rules expect it: {:?}",
        graph.keys().collect::<Vec<_>>()
    );
    let problems = never_problems(&graph, &nevers());
    assert!(
        problems.is_empty(),
        "layers broken (each with the chain of edges that does it):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn nevers_are_followed_through_other_modules() {
    let graph = fake_graph(&[
        ("device::core", "signalling::events"),
        ("signalling::events", "gpio"),
        ("device::core::bell", "call"),
    ]);
    let problems = never_problems(&graph, &[("device::core", vec!["gpio", "rtc"])]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("device::core reaches gpio")
            && problems[0].contains("signalling::events → gpio"),
        "{problems:?}"
    );
    assert!(within("device::core::bell", "device::core"));
    assert!(!within("device::corest", "device::core"));
}

#[test]
fn no_src_file_is_over_the_line_limit() {
    let files = library_files(&src_dir());
    let mut problems: Vec<String> = files
        .iter()
        .filter(|f| f.lines > LINE_LIMIT && !ALLOWED_LONG_FILES.contains(&f.rel.as_str()))
        .map(|f| {
            format!(
                "src/{} has {} lines of non-test code (limit {LINE_LIMIT})",
                f.rel, f.lines
            )
        })
        .collect();
    // main.rs is not in the library but has the same limit.
    let main = std::fs::read_to_string(src_dir().join("main.rs")).expect("src/main.rs");
    let main_lines = non_test_part(&main).lines().count();
    if main_lines > LINE_LIMIT {
        problems.push(format!(
            "src/main.rs has {main_lines} lines of non-test code"
        ));
    }
    for allowed in ALLOWED_LONG_FILES {
        match files.iter().find(|f| f.rel == *allowed) {
            Some(f) if f.lines > LINE_LIMIT => {}
            Some(f) => problems.push(format!(
                "src/{allowed} is down to {} lines: remove it from ALLOWED_LONG_FILES",
                f.lines
            )),
            None => problems.push(format!(
                "src/{allowed} is gone: remove it from ALLOWED_LONG_FILES"
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn fake_graph(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for (from, to) in edges {
        graph
            .entry(from.to_string())
            .or_default()
            .insert(to.to_string(), format!("{from}.rs:1"));
        graph.entry(to.to_string()).or_default();
    }
    graph
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_cycle_finder_finds_every_circle_and_nothing_else() {
    // a → b → c → a is one circle; d ↔ e another; c → d joins them only one way; f → a
    // and g alone are in none.
    let graph = fake_graph(&[
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("c", "d"),
        ("d", "e"),
        ("e", "d"),
        ("f", "a"),
        ("g", "g2"),
    ]);
    assert_eq!(cycles(&graph), [set(&["a", "b", "c"]), set(&["d", "e"])]);
    assert_eq!(
        show_cycle(&graph, &set(&["a", "b", "c"])),
        "a → b (a.rs:1) → c (b.rs:1) → a (c.rs:1)"
    );
    assert!(cycles(&fake_graph(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());

    let found = all_cycles(&graph);
    assert_eq!(found.len(), 2, "{found:?}");
    let problems = cycle_problems(&found, &[&["d", "e"], &["x", "y"]]);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("circle between {\"a\", \"b\", \"c\"}"),
        "{problems:?}"
    );
    assert!(problems[1].contains("no longer a circle"), "{problems:?}");
}

#[test]
fn paths_are_read_from_use_trees_and_inline_code_but_not_comments() {
    let module = vec!["media".to_owned(), "pipeline".to_owned()];
    let code = blank_comments_and_literals(
        "//! See [`crate::tls::Acceptor`].\n\
         use super::{encode, probe::{self, resolve as r}};\n\
         pub use crate::config::Settings;\n\
         use std::fmt::Write as _;\n\
         fn f() { let s = \"crate::web::page\"; let c = '\"'; crate::rtc::RtcEngine::new(); }\n\
         /* crate::gpio::Button */ fn g<'a>(x: &'a str) { super::super::call::Call::ring(x) }\n",
    );
    let modules: BTreeSet<Vec<String>> =
        ["media", "media::pipeline", "media::encode", "media::probe"]
            .iter()
            .map(|m| m.split("::").map(str::to_owned).collect())
            .collect();
    let refs = path_refs(&code, &module, &modules);
    let shown: Vec<(String, usize, bool)> = refs
        .iter()
        .map(|r| (r.segments.join("::"), r.line, r.reexport))
        .collect();
    assert_eq!(
        shown,
        [
            ("media::encode".to_owned(), 2, false),
            ("media::probe".to_owned(), 2, false),
            ("media::probe::resolve".to_owned(), 2, false),
            ("config::Settings".to_owned(), 3, true),
            ("rtc::RtcEngine::new".to_owned(), 5, false),
            ("call::Call::ring".to_owned(), 6, false),
        ]
    );
}

#[test]
fn re_exports_are_followed_to_the_module_that_defines_the_item() {
    let file = |rel: &str, text: &str| SourceFile {
        rel: rel.to_owned(),
        module: module_of(rel),
        code: blank_comments_and_literals(text),
        lines: text.lines().count(),
    };
    // rtc re-exports its children; a child naming a sibling through the parent's
    // re-export depends on the sibling, not on the parent.
    let files = [
        file("lib.rs", "pub mod rtc;\npub mod app;\n"),
        file(
            "rtc/mod.rs",
            "mod peer;\nmod caller;\npub use peer::Peer;\npub use caller::Caller;\n",
        ),
        file("rtc/peer.rs", "pub struct Peer;\n"),
        file("rtc/caller.rs", "use super::Peer;\npub struct Caller;\n"),
        file("app.rs", "use crate::rtc::{Caller, Peer};\n"),
    ];
    let graph = module_graph(&files);
    let edges: Vec<(&str, &str, &str)> = graph
        .iter()
        .flat_map(|(from, to)| {
            to.iter()
                .map(move |(to, at)| (from.as_str(), to.as_str(), at.as_str()))
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("app", "rtc::caller", "src/app.rs:1"),
            ("app", "rtc::peer", "src/app.rs:1"),
            ("rtc::caller", "rtc::peer", "src/rtc/caller.rs:1"),
        ]
    );
    assert_eq!(graph.len(), 4, "{graph:?}");
    assert!(cycles(&graph).is_empty());
}

#[test]
fn test_code_and_line_counts_stop_at_the_first_cfg_test() {
    let text = "use crate::a::B;\nfn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::c::D;\n}\n";
    assert_eq!(non_test_part(text), "use crate::a::B;\nfn f() {}\n");
    assert_eq!(module_of("media/mod.rs"), ["media"]);
    assert_eq!(module_of("media/probe.rs"), ["media", "probe"]);
    assert!(module_of("lib.rs").is_empty());
}

#[test]
fn a_private_child_naming_its_parent_is_a_file_split_but_a_public_one_is_a_circle() {
    let file = |rel: &str, text: &str| SourceFile {
        rel: rel.to_owned(),
        module: module_of(rel),
        code: blank_comments_and_literals(text),
        lines: text.lines().count(),
    };
    let files = [
        file("lib.rs", "pub mod book;\npub mod dev;\n"),
        file(
            "book.rs",
            "mod calls;\npub struct Book;\nfn f() { calls::route(); }\n",
        ),
        file("book/calls.rs", "use super::Book;\npub fn route() {}\n"),
        file(
            "dev/mod.rs",
            "pub mod pins;\npub struct Edge;\nfn open() { pins::open(); }\n",
        ),
        file("dev/pins.rs", "use super::Edge;\npub fn open() {}\n"),
    ];
    let found: Vec<BTreeSet<String>> = all_cycles(&module_graph(&files))
        .into_iter()
        .map(|(component, _)| component)
        .collect();
    assert_eq!(found, [set(&["dev", "dev::pins"])]);
}
