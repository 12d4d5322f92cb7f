//! The house rules of the crate's layout, checked on the sources themselves.
//!
//! `src/` is a stack of layers. A file may name (through a `crate::` path, or by climbing out
//! of its module with `super::`) only its own top module or modules of a lower rank: front
//! ends → cache → coherence → core → redis, store → model → key, error (`redis` and `store`
//! share a rank, so neither imports the other). Besides that: no import loops between files,
//! fred only under `src/redis/`, `Cache` named only from `cache/` up, no file over 600 lines,
//! no `#[path]` swaps, and documentation that stands on its own.
//!
//! Every test collects all the violations of its rule and reports them at once, each with its
//! file, line and what is wrong. The checker is plain text processing (std only): comments,
//! string and character literals are blanked out before the code is read, so rustdoc links
//! such as ``[`Cache`](crate::Cache)`` and strings are never taken for imports.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::path::Path;

/// The rank of each top module of `src/` (a directory `src/x/` or a file `src/x.rs`). This
/// mirrors the layout described in the README's "Layout" section: change the two together.
/// `src/lib.rs` is the root (module declarations and re-exports) and has no rank.
const RANKS: &[(&str, u8)] = &[
    ("key", 0),
    ("error", 0),
    ("model", 1),
    ("store", 2),
    ("redis", 2),
    ("core", 3),
    ("coherence", 4),
    ("cache", 5),
    ("layer", 6),
    ("admin", 6),
    ("__private", 6),
];

/// Same-rank imports that are not sideways: error.rs is the floor, and keys report `Error`s.
const SIDEWAYS: &[(&str, &str)] = &[("key", "error")];

/// The rank of `cache/`: below it, nothing names the type `Cache`.
const CACHE_RANK: u8 = 5;
/// The rank of the front ends, the only files that may use the root's public API
/// (`crate::Cache`, `crate::Error`, `crate::global`, ...).
const FRONT_END_RANK: u8 = 6;
/// The top module `Cache` lives in.
const CACHE_MODULE: &str = "cache";
/// The top module where fred may be named (`src/redis/`, or `src/redis.rs` and `src/redis/`).
const FRED_HOME: &str = "redis";
/// The longest a source file may be.
const MAX_LINES: usize = 600;
/// Fewer files than this under `src/` means the walk is looking in the wrong place.
const MIN_SOURCE_FILES: usize = 20;
/// Case-insensitive patterns of references to documents outside the repository; a trailing
/// `[0-9]` stands for one digit, the rest is literal.
const CITATIONS: &[&str] = &[
    "seed [0-9]",
    "seed 00",
    "the seed",
    "seed's",
    "shared notes",
    "shared/",
];

const RULE_ARROWS: &str =
    "arrows point down (front ends → cache → coherence → core → redis, store → model → key, error)";
const RULE_LOOPS: &str = "no import loop between files";
const RULE_FRED: &str = "fred is named only under src/redis/";
const RULE_CACHE: &str = "nothing below cache/ names the type `Cache`";
const RULE_SMALL: &str = "no source file over 600 lines (src/, macros/src/)";
const RULE_PATH: &str = "no #[path = …] attribute in src/";
const RULE_DOCS: &str =
    "documentation stands on its own: no citing of outside documents (src/, macros/src/, examples/)";

// ---------------------------------------------------------------------------------------------
// The rules: one test each, over the real sources; the checks are functions of a `Crate` so
// that the checker's own tests (at the bottom) can run them on made-up layouts.

#[test]
fn arrows_point_down() {
    verdict(RULE_ARROWS, arrow_violations(&Crate::load()));
}

#[test]
fn no_import_loops() {
    verdict(RULE_LOOPS, loop_violations(&Crate::load()));
}

#[test]
fn fred_only_under_src_redis() {
    verdict(RULE_FRED, fred_violations(&Crate::load()));
}

#[test]
fn nothing_below_cache_names_cache() {
    verdict(RULE_CACHE, cache_violations(&Crate::load()));
}

#[test]
fn files_stay_small() {
    let mut sources = read_sources("src");
    sources.extend(read_sources("macros/src"));
    let mut found = Vec::new();
    for (rel, text) in sources {
        let lines = text.lines().count();
        if lines > MAX_LINES {
            found.push(Violation {
                file: rel,
                line: 0,
                what: format!("{lines} lines, over the {MAX_LINES}-line limit: split it"),
            });
        }
    }
    verdict(RULE_SMALL, found);
}

#[test]
fn no_path_swaps() {
    verdict(RULE_PATH, path_violations(&Crate::load()));
}

#[test]
fn docs_stand_on_their_own() {
    let mut found = Vec::new();
    for dir in ["src", "macros/src", "examples"] {
        for (rel, text) in read_sources(dir) {
            for (line, pattern, excerpt) in citations(&text) {
                found.push(Violation {
                    file: rel.clone(),
                    line,
                    what: format!("matches `{pattern}`: \"{excerpt}\""),
                });
            }
        }
    }
    verdict(RULE_DOCS, found);
}

fn arrow_violations(krate: &Crate) -> Vec<Violation> {
    let mut found = Vec::new();
    for file in krate.ranked_files() {
        let Some((own, rank)) = krate.place(file, &mut found) else {
            continue;
        };
        for r in krate.references(file) {
            let target = krate.top_module(&r.abs);
            if r.via_root && rank < FRONT_END_RANK {
                let through = match target {
                    Some(_) => format!(" (crate::{})", r.abs.join("::")),
                    None => String::new(),
                };
                found.push(Violation::at(
                    file,
                    r.line,
                    format!(
                        "`{}` is the front-end API (a root re-export, for rank-{FRONT_END_RANK} \
                         files only): import through the module path{through}",
                        r.written
                    ),
                ));
                continue;
            }
            let Some(target) = target else {
                continue; // a root item that is not a re-export of a module: the front end's own
            };
            if target == own || SIDEWAYS.contains(&(own, target)) {
                continue;
            }
            match rank_of(target) {
                None => found.push(Violation::at(
                    file,
                    r.line,
                    format!(
                        "`{}` names module `{target}`, which is outside the house layout",
                        r.written
                    ),
                )),
                Some(to) if to >= rank => {
                    let way = if to == rank { "sideways" } else { "up" };
                    found.push(Violation::at(
                        file,
                        r.line,
                        format!(
                            "arrow points {way}: `{own}` (rank {rank}) → `{target}` (rank {to}) \
                             through `{}`",
                            r.written
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    found
}

fn loop_violations(krate: &Crate) -> Vec<Violation> {
    let (edges, adjacency) = krate.file_graph();
    let mut found = Vec::new();
    for knot in strongly_connected(&adjacency) {
        if knot.len() < 2 {
            continue; // edges from a file to itself are never recorded
        }
        let start = knot[0];
        let cycle = shortest_cycle(start, &knot, &adjacency);
        let mut chain = String::new();
        for pair in cycle.windows(2) {
            chain.push_str(&format!(
                "{} (line {}) → ",
                krate.files[pair[0]].rel,
                edges[&(pair[0], pair[1])]
            ));
        }
        chain.push_str(&krate.files[start].rel);
        let members: Vec<&str> = knot.iter().map(|&i| krate.files[i].rel.as_str()).collect();
        found.push(Violation::at(
            &krate.files[start],
            edges[&(cycle[0], cycle[1])],
            format!(
                "import loop: {chain}; the {} files knotted together: {}",
                members.len(),
                members.join(", ")
            ),
        ));
    }
    found
}

/// The whole file counts here, test modules included.
fn fred_violations(krate: &Crate) -> Vec<Violation> {
    let mut found = Vec::new();
    for file in &krate.files {
        if file.module.first().is_some_and(|top| top == FRED_HOME) {
            continue;
        }
        for line in fred_lines(&file.tokens) {
            found.push(Violation::at(
                file,
                line,
                format!("names fred: only files under src/{FRED_HOME}/ may"),
            ));
        }
    }
    found
}

fn cache_violations(krate: &Crate) -> Vec<Violation> {
    let mut found = Vec::new();
    for file in krate.ranked_files() {
        let Some((own, rank)) = krate.place(file, &mut found) else {
            continue;
        };
        if rank >= CACHE_RANK {
            continue;
        }
        for r in krate.references(file) {
            let into_cache = r.abs.first().map(String::as_str) == Some(CACHE_MODULE);
            let names_cache = r.abs.iter().any(|s| s == "Cache");
            let glob = r.abs.last().map(String::as_str) == Some("*");
            if (into_cache || r.via_root) && (names_cache || (into_cache && glob)) {
                found.push(Violation::at(
                    file,
                    r.line,
                    format!(
                        "`{own}` (rank {rank}) names `Cache` through `{}`: only cache/ and the \
                         front ends may",
                        r.written
                    ),
                ));
            }
        }
    }
    found
}

fn path_violations(krate: &Crate) -> Vec<Violation> {
    let mut found = Vec::new();
    for file in &krate.files {
        for line in path_attribute_lines(&file.tokens) {
            found.push(Violation::at(
                file,
                line,
                "a `path = …` attribute: a module is its file; use `#[cfg]` items inside it \
                 instead"
                    .to_owned(),
            ));
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Reporting.

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: String,
    /// 0 when the violation is about the whole file.
    line: usize,
    what: String,
}

impl Violation {
    fn at(file: &RustFile, line: usize, what: String) -> Self {
        Violation {
            file: file.rel.clone(),
            line,
            what,
        }
    }
}

fn verdict(rule: &str, mut found: Vec<Violation>) {
    found.sort();
    found.dedup();
    let mut report = String::new();
    for v in &found {
        if v.line == 0 {
            report.push_str(&format!("  {}: {}\n", v.file, v.what));
        } else {
            report.push_str(&format!("  {}:{}: {}\n", v.file, v.line, v.what));
        }
    }
    assert!(
        found.is_empty(),
        "house rule broken: {rule}\n{} violation(s):\n{report}",
        found.len()
    );
}

// ---------------------------------------------------------------------------------------------
// The crate as the checker sees it.

fn rank_of(module: &str) -> Option<u8> {
    RANKS.iter().find(|(m, _)| *m == module).map(|&(_, r)| r)
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir` (relative to the manifest), as (path with `/`, text), sorted.
fn read_tree(dir: &str) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("readable directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("under the manifest dir");
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                let text = fs::read_to_string(&path).expect("readable source file");
                out.push((rel.join("/"), text));
            }
        }
    }
    let mut out = Vec::new();
    walk(manifest_dir(), &manifest_dir().join(dir), &mut out);
    out.sort();
    out
}

/// `read_tree`, failing when the walk finds (next to) nothing: a checker that reads no files
/// passes every rule.
fn read_sources(dir: &str) -> Vec<(String, String)> {
    let sources = read_tree(dir);
    let least = if dir == "src" { MIN_SOURCE_FILES } else { 1 };
    assert!(
        sources.len() >= least,
        "the checker found no files; did {dir}/ move? ({} .rs files under {}, expected at \
         least {least})",
        sources.len(),
        manifest_dir().join(dir).display()
    );
    sources
}

struct RustFile {
    /// `src/core/breaker.rs`.
    rel: String,
    /// The module path: `[core, breaker]`; `[core]` for `src/core/mod.rs`; `[]` for lib.rs.
    module: Vec<String>,
    /// Every token of the code, comments and literals left out.
    tokens: Vec<Tok>,
    /// The tokens outside `#[cfg(test)]` items.
    live: Vec<Tok>,
    /// Child modules declared as `#[cfg(test)] mod name;`: their files are test code.
    test_children: Vec<String>,
}

impl RustFile {
    fn new(rel: String, text: String) -> Self {
        let path = rel.strip_prefix("src/").unwrap_or(&rel);
        let mut module: Vec<String> = path
            .strip_suffix(".rs")
            .unwrap_or(path)
            .split('/')
            .map(str::to_owned)
            .collect();
        if module.last().is_some_and(|m| m == "mod") || module == ["lib"] {
            module.pop();
        }
        let (code, _) = split_comments(&text);
        let tokens = tokenize(&code);
        let (live, test_children) = without_test_items(&tokens);
        RustFile {
            rel,
            module,
            tokens,
            live,
            test_children,
        }
    }

    fn is_root(&self) -> bool {
        self.module.is_empty()
    }
}

/// A `crate::`/`super::`/`self::` path as written, resolved from the crate root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    /// As written, groups flattened: `crate::cache::Cache`.
    written: String,
    /// From the crate root, root re-exports followed: `[cache, Cache]`.
    abs: Vec<String>,
    line: usize,
    /// Written as a root item (`crate::Cache`, `crate::global`) rather than a module path.
    via_root: bool,
}

/// File-level imports: (from, to) → the line of the first import.
type Edges = BTreeMap<(usize, usize), usize>;

struct Crate {
    files: Vec<RustFile>,
    by_module: HashMap<Vec<String>, usize>,
    /// The first segment of every module path (`core`, `store`, ...).
    top_modules: BTreeSet<String>,
    /// The names lib.rs brings into the root with `use`, and their paths.
    root_uses: HashMap<String, Vec<String>>,
}

impl Crate {
    fn load() -> Self {
        Crate::from_sources(read_sources("src"))
    }

    fn from_sources(mut sources: Vec<(String, String)>) -> Self {
        sources.sort();
        let files: Vec<RustFile> = sources
            .into_iter()
            .map(|(rel, text)| RustFile::new(rel, text))
            .collect();
        let by_module = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.module.clone(), i))
            .collect();
        let top_modules = files
            .iter()
            .filter_map(|f| f.module.first().cloned())
            .collect();
        let mut root_uses = HashMap::new();
        if let Some(lib) = files.iter().find(|f| f.is_root()) {
            for (name, path) in use_declarations(&lib.live) {
                root_uses.insert(name, path);
            }
        }
        Crate {
            files,
            by_module,
            top_modules,
            root_uses,
        }
    }

    /// Files whose module is declared `#[cfg(test)] mod name;` (or lies under one).
    fn is_test_only(&self, file: &RustFile) -> bool {
        self.files.iter().any(|parent| {
            parent.test_children.iter().any(|child| {
                let mut path = parent.module.clone();
                path.push(child.clone());
                file.module.starts_with(&path)
            })
        })
    }

    /// The files the layering rules apply to: all but lib.rs and test-only files.
    fn ranked_files(&self) -> impl Iterator<Item = &RustFile> {
        self.files
            .iter()
            .filter(|f| !f.is_root() && !self.is_test_only(f))
    }

    /// The file's top module and rank; a violation when the top module has no rank.
    fn place<'a>(&self, file: &'a RustFile, found: &mut Vec<Violation>) -> Option<(&'a str, u8)> {
        let top = file.module.first()?.as_str();
        match rank_of(top) {
            Some(rank) => Some((top, rank)),
            None => {
                found.push(Violation::at(
                    file,
                    0,
                    format!("file outside the house layout: top module `{top}` has no rank"),
                ));
                None
            }
        }
    }

    fn top_module<'p>(&self, abs: &'p [String]) -> Option<&'p str> {
        abs.first()
            .filter(|m| self.top_modules.contains(*m))
            .map(String::as_str)
    }

    /// The crate paths `file` uses outside its test items, resolved.
    fn references(&self, file: &RustFile) -> Vec<Reference> {
        path_refs(&file.live)
            .into_iter()
            .filter_map(|raw| self.resolve(&file.module, raw))
            .collect()
    }

    fn resolve(&self, module: &[String], raw: RawRef) -> Option<Reference> {
        let mut written = raw.segs.join("::");
        if let Some(module) = written.strip_suffix("::self") {
            written = module.to_owned(); // `crate::x::{self, …}`
        }
        let mut rest = raw.segs.as_slice();
        let mut base: Vec<String>;
        if rest.first().map(String::as_str) == Some("crate") {
            base = Vec::new();
            rest = &rest[1..];
        } else {
            base = module.to_vec();
            while let Some(seg) = rest.first() {
                match seg.as_str() {
                    "super" => {
                        base.pop()?;
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        base.extend(rest.iter().filter(|s| *s != "self").cloned());
        let mut abs = base;
        let first = abs.first()?.clone();
        let via_root = !self.top_modules.contains(&first);
        if via_root {
            if let Some(path) = self.root_uses.get(&first) {
                abs.splice(0..1, path.iter().cloned());
            }
        }
        Some(Reference {
            written,
            abs,
            line: raw.line,
            via_root,
        })
    }

    /// The file an absolute path lands in: the longest module prefix that has a file.
    fn file_of(&self, abs: &[String]) -> Option<usize> {
        (0..=abs.len())
            .rev()
            .find_map(|n| self.by_module.get(&abs[..n]).copied())
    }

    /// File-level import edges (with the first line of each) and the adjacency lists. A
    /// module's file naming its own children (re-exports) and children naming the items of
    /// their module's file (`super::X`) are not imports; lib.rs and test-only files are left
    /// out.
    fn file_graph(&self) -> (Edges, Vec<Vec<usize>>) {
        let mut edges = BTreeMap::new();
        for (from, file) in self.files.iter().enumerate() {
            if file.is_root() || self.is_test_only(file) {
                continue;
            }
            for r in self.references(file) {
                let Some(to) = self.file_of(&r.abs) else {
                    continue;
                };
                let target = &self.files[to];
                if to == from || target.is_root() || self.is_test_only(target) {
                    continue;
                }
                // A module's file (`mod.rs`, or `x.rs` beside `x/`) and the files of its
                // descendants: the façade re-exports its children, the children use its items.
                let facade_to_child = target.module.starts_with(&file.module);
                let child_to_facade = file.module.starts_with(&target.module);
                if facade_to_child || child_to_facade {
                    continue;
                }
                edges.entry((from, to)).or_insert(r.line);
            }
        }
        let mut adjacency = vec![Vec::new(); self.files.len()];
        for &(from, to) in edges.keys() {
            adjacency[from].push(to);
        }
        (edges, adjacency)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading Rust: comments and literals out, tokens, test items, paths.

/// Splits source text into (code, comments), both with the lines of `src`: in `code`,
/// comments are blanked and every string or character literal becomes `"` + blanks + `"`; in
/// `comments`, everything but the comments is blanked.
fn split_comments(src: &str) -> (String, String) {
    let s: Vec<char> = src.chars().collect();
    let mut code = String::with_capacity(src.len());
    let mut comments = String::with_capacity(src.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                code.push(' ');
                comments.push(s[i]);
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < s.len() {
                let two = (s[i], s.get(i + 1).copied());
                let step = match two {
                    ('/', Some('*')) => {
                        depth += 1;
                        2
                    }
                    ('*', Some('/')) => {
                        depth -= 1;
                        2
                    }
                    _ => 1,
                };
                for &ch in &s[i..i + step] {
                    code.push(blank(ch));
                    comments.push(ch);
                }
                i += step;
                if depth == 0 {
                    break;
                }
            }
            continue;
        }
        let after_ident = i > 0 && is_ident_char(s[i - 1]);
        let literal = match c {
            '"' | '\'' => literal_end(&s, i),
            'r' | 'b' | 'c' if !after_ident => literal_end(&s, i),
            _ => None,
        };
        if let Some(end) = literal {
            for (k, &ch) in s.iter().enumerate().take(end).skip(i) {
                let keep = if k == i || k == end - 1 { '"' } else { ' ' };
                code.push(if ch == '\n' { '\n' } else { keep });
                comments.push(blank(ch));
            }
            i = end;
            continue;
        }
        code.push(c);
        comments.push(blank(c));
        i += 1;
    }
    (code, comments)
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// The end (exclusive) of the string or character literal starting at `i`, if one does:
/// `"…"`, `r#"…"#`, `b"…"`, `br"…"`, `c"…"`, `'x'`, `'\n'`, `b'x'`. A lifetime is not one.
fn literal_end(s: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(s[j], 'b' | 'c') {
        j += 1;
    }
    if s.get(j) == Some(&'r') {
        let mut k = j + 1;
        let mut hashes = 0;
        while s.get(k) == Some(&'#') {
            hashes += 1;
            k += 1;
        }
        if s.get(k) != Some(&'"') {
            return None;
        }
        k += 1;
        while k < s.len() {
            if s[k] == '"' && (1..=hashes).all(|h| s.get(k + h) == Some(&'#')) {
                return Some(k + 1 + hashes);
            }
            k += 1;
        }
        return Some(s.len());
    }
    match s.get(j) {
        Some('"') => {
            let mut k = j + 1;
            while k < s.len() {
                match s[k] {
                    '\\' => k += 2,
                    '"' => return Some(k + 1),
                    _ => k += 1,
                }
            }
            Some(s.len())
        }
        Some('\'') => {
            if s.get(j + 1) == Some(&'\\') {
                let close = (j + 3..s.len()).find(|&k| s[k] == '\'')?;
                Some(close + 1)
            } else if s.get(j + 2) == Some(&'\'') {
                Some(j + 3)
            } else {
                None // a lifetime or a label
            }
        }
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Tok {
    text: String,
    line: usize,
}

fn tokenize(code: &str) -> Vec<Tok> {
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
        } else if is_ident_char(c) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            out.push(Tok {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Tok {
                text: "::".to_owned(),
                line,
            });
            i += 2;
        } else {
            out.push(Tok {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

fn is_ident(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c == '_' || c.is_alphabetic())
}

fn text_at(t: &[Tok], i: usize) -> &str {
    t.get(i).map_or("", |tok| tok.text.as_str())
}

/// If an attribute (`#[…]` or `#![…]`) starts at `i`: the index just past its `]`, and its
/// body with the spaces removed (`cfg(test)`).
fn attribute_at(t: &[Tok], i: usize) -> Option<(usize, String)> {
    if text_at(t, i) != "#" {
        return None;
    }
    let open = if text_at(t, i + 1) == "!" {
        i + 2
    } else {
        i + 1
    };
    if text_at(t, open) != "[" {
        return None;
    }
    let mut depth = 0;
    for k in open..t.len() {
        match t[k].text.as_str() {
            "[" => depth += 1,
            "]" => {
                depth -= 1;
                if depth == 0 {
                    let body = t[open + 1..k].iter().map(|x| x.text.as_str()).collect();
                    return Some((k + 1, body));
                }
            }
            _ => {}
        }
    }
    None
}

fn is_test_gate(body: &str) -> bool {
    body == "cfg(test)" || body.starts_with("cfg(all(test,")
}

/// The end (exclusive) of the item (or statement) starting at `i`, attributes included: its
/// `;` or the `}` closing its body; it stops before a bracket closing an enclosing one.
fn item_end(t: &[Tok], mut i: usize) -> usize {
    while let Some((end, _)) = attribute_at(t, i) {
        i = end;
    }
    let mut depth = 0i32;
    while i < t.len() {
        match t[i].text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" => {
                depth -= 1;
                if depth < 0 {
                    return i;
                }
            }
            "}" => {
                depth -= 1;
                if depth <= 0 {
                    return if depth < 0 { i } else { i + 1 };
                }
            }
            ";" if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    t.len()
}

/// The tokens outside the items gated by `#[cfg(test)]` (test modules, test helpers), and the
/// names of the test modules declared as `mod name;` (their own files). Whole items are
/// skipped, wherever they are in the file; `#![cfg(test)]` skips the whole file. Inline
/// non-test modules (`mod x { … }`) are not tracked: their `super::` is read as the file's.
fn without_test_items(t: &[Tok]) -> (Vec<Tok>, Vec<String>) {
    let mut live = Vec::new();
    let mut children = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if let Some((after, body)) = attribute_at(t, i) {
            if is_test_gate(&body) {
                if text_at(t, i + 1) == "!" {
                    return (Vec::new(), children);
                }
                let end = item_end(t, after);
                for k in after..end {
                    if t[k].text == "mod" && text_at(t, k + 2) == ";" && k + 2 < end {
                        children.push(t[k + 1].text.clone());
                    }
                }
                i = end;
                continue;
            }
        }
        live.push(t[i].clone());
        i += 1;
    }
    (live, children)
}

/// A path as written, group items flattened: `[crate, core, breaker, Breaker]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawRef {
    segs: Vec<String>,
    alias: Option<String>,
    line: usize,
}

/// Every path starting with `crate::`, `super::` or `self::` (also `$crate::`), use trees
/// with nested groups included.
fn path_refs(t: &[Tok]) -> Vec<RawRef> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let starts = matches!(t[i].text.as_str(), "crate" | "super" | "self")
            && text_at(t, i + 1) == "::"
            && (i == 0 || t[i - 1].text != "::");
        if starts {
            i = parse_tree(t, i, &[], &mut out).max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Parses the path or use tree at `i`, below `prefix`; returns the index after it.
fn parse_tree(t: &[Tok], mut i: usize, prefix: &[String], out: &mut Vec<RawRef>) -> usize {
    let mut segs = prefix.to_vec();
    let mut line = t.get(i).map_or(0, |tok| tok.line);
    loop {
        match text_at(t, i) {
            "{" => {
                i += 1;
                loop {
                    match text_at(t, i) {
                        "" => return i,
                        "}" => return i + 1,
                        "," => i += 1,
                        _ => i = parse_tree(t, i, &segs, out).max(i + 1),
                    }
                }
            }
            word if word == "*" || is_ident(word) => {
                segs.push(word.to_owned());
                line = t[i].line;
                i += 1;
                if text_at(t, i) == "::" {
                    i += 1;
                    continue;
                }
                let mut alias = None;
                if text_at(t, i) == "as" {
                    alias = t.get(i + 1).map(|a| a.text.clone());
                    i += 2;
                }
                out.push(RawRef { segs, alias, line });
                return i;
            }
            _ => {
                // `crate::f::<T>`, or a stray `::`: the path so far.
                if segs.len() > prefix.len() {
                    out.push(RawRef {
                        segs,
                        alias: None,
                        line,
                    });
                }
                return i;
            }
        }
    }
}

/// The names `use` declarations bring into scope (lib.rs's re-exports), with their paths from
/// the crate root: `pub use cache::{Cache, Fetched as F};` → `Cache` → `[cache, Cache]`,
/// `F` → `[cache, Fetched]`. Globs are left out.
fn use_declarations(t: &[Tok]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for i in 0..t.len() {
        if t[i].text != "use" {
            continue;
        }
        let mut trees = Vec::new();
        parse_tree(t, i + 1, &[], &mut trees);
        for mut tree in trees {
            if matches!(
                tree.segs.first().map(String::as_str),
                Some("crate" | "self")
            ) {
                tree.segs.remove(0);
            }
            if tree.segs.last().is_some_and(|s| s == "self") {
                tree.segs.pop();
            }
            let Some(last) = tree.segs.last().cloned() else {
                continue;
            };
            if last == "*" {
                continue;
            }
            out.push((tree.alias.unwrap_or(last), tree.segs));
        }
    }
    out
}

/// Lines where code names fred: a path rooted at `fred` (`fred::…`, `::fred::…`), `use fred`
/// or `extern crate fred`.
fn fred_lines(t: &[Tok]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, tok) in t.iter().enumerate() {
        if tok.text != "fred" {
            continue;
        }
        let prev = if i > 0 { text_at(t, i - 1) } else { "" };
        let before_prev = if i > 1 { text_at(t, i - 2) } else { "" };
        let rooted = match prev {
            // `::fred::…` is rooted, `x::fred::…` is not; keywords do not make a path.
            "::" => !(is_ident(before_prev) || before_prev == ">") || is_keyword(before_prev),
            "." => false,
            _ => true,
        };
        let path = text_at(t, i + 1) == "::" && rooted;
        let declared = prev == "use" || (prev == "crate" && before_prev == "extern");
        if path || declared {
            out.push(tok.line);
        }
    }
    out
}

fn is_keyword(word: &str) -> bool {
    matches!(
        word,
        "use" | "in" | "as" | "dyn" | "impl" | "for" | "let" | "mut" | "return" | "where"
    )
}

/// Lines of attributes with a `path = …` in them, `#[cfg_attr(…, path = …)]` included.
fn path_attribute_lines(t: &[Tok]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if let Some((end, _)) = attribute_at(t, i) {
            for k in i..end {
                if t[k].text == "path" && text_at(t, k + 1) == "=" {
                    out.push(t[k].line);
                }
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// (line, pattern, excerpt) for each comment line, or `#[doc = …]` line, citing an outside
/// document.
fn citations(text: &str) -> Vec<(usize, &'static str, String)> {
    let (code, comments) = split_comments(text);
    let mut out = Vec::new();
    for (n, ((raw, code), comment)) in text
        .lines()
        .zip(code.lines())
        .zip(comments.lines())
        .enumerate()
    {
        let squeezed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let doc_attribute = squeezed.contains("#[doc") || squeezed.contains("#![doc");
        let prose = if doc_attribute { raw } else { comment };
        if let Some(pattern) = cites(prose) {
            let excerpt: String = prose.trim().chars().take(90).collect();
            out.push((n + 1, pattern, excerpt));
        }
    }
    out
}

fn cites(prose: &str) -> Option<&'static str> {
    let hay = prose.to_lowercase().replace('\u{2019}', "'");
    CITATIONS
        .iter()
        .copied()
        .find(|pattern| match pattern.strip_suffix("[0-9]") {
            Some(prefix) => hay
                .match_indices(prefix)
                .any(|(at, _)| hay[at + prefix.len()..].starts_with(|c: char| c.is_ascii_digit())),
            None => hay.contains(pattern),
        })
}

// ---------------------------------------------------------------------------------------------
// Loops.

/// Tarjan's strongly connected components.
fn strongly_connected(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        adjacency: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.adjacency[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().expect("v is on the stack");
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort_unstable();
            s.out.push(component);
        }
    }
    let n = adjacency.len();
    let mut s = State {
        adjacency,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// The shortest cycle through `start` inside `knot`, as `[start, …, start]`.
fn shortest_cycle(start: usize, knot: &[usize], adjacency: &[Vec<usize>]) -> Vec<usize> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &adjacency[v] {
            if !knot.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![start, v];
                let mut at = v;
                while at != start {
                    at = parent[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    vec![start, start]
}

// ---------------------------------------------------------------------------------------------
// The checker's own tests: it must not pass by reading nothing.

fn crate_of(files: &[(&str, &str)]) -> Crate {
    Crate::from_sources(
        files
            .iter()
            .map(|(rel, text)| (rel.to_string(), text.to_string()))
            .collect(),
    )
}

fn references_of(krate: &Crate, rel: &str) -> Vec<Reference> {
    let file = krate
        .files
        .iter()
        .find(|f| f.rel == rel)
        .expect("file in the test crate");
    krate.references(file)
}

fn tops(refs: &[Reference]) -> BTreeSet<String> {
    refs.iter().map(|r| r.abs[0].clone()).collect()
}

fn layout_for_tests(extra: &[(&'static str, &'static str)]) -> Crate {
    let mut files = vec![
        (
            "src/lib.rs",
            "mod cache; mod core; mod model; mod store; pub mod key; mod error;\n\
             pub use cache::{Cache, global as global};\npub use error::Error;\n",
        ),
        ("src/cache/mod.rs", "pub struct Cache;\n"),
        (
            "src/core/mod.rs",
            "mod breaker; mod flights; pub use self::breaker::Breaker;\n",
        ),
        ("src/core/breaker.rs", "pub struct Breaker;\n"),
        ("src/core/flights.rs", "pub struct Flights;\n"),
        ("src/model/mod.rs", "pub struct Invalidation;\n"),
        ("src/store/mod.rs", "pub struct Local;\n"),
        ("src/key/mod.rs", "pub struct Key;\n"),
        ("src/error.rs", "pub struct Error;\n"),
    ];
    for &(rel, text) in extra {
        files.retain(|&(r, _)| r != rel);
        files.push((rel, text));
    }
    crate_of(&files)
}

#[test]
fn parser_reads_nested_groups() {
    let krate = layout_for_tests(&[(
        "src/cache/load.rs",
        "use crate::{core::{Core, breaker::Breaker}, model::Invalidation};\n",
    )]);
    let refs = references_of(&krate, "src/cache/load.rs");
    let written: Vec<&str> = refs.iter().map(|r| r.written.as_str()).collect();
    assert_eq!(
        written,
        [
            "crate::core::Core",
            "crate::core::breaker::Breaker",
            "crate::model::Invalidation"
        ]
    );
    assert_eq!(tops(&refs), BTreeSet::from(["core".into(), "model".into()]));
}

#[test]
fn parser_ignores_comments_strings_and_doc_links() {
    let text = r##"//! See [`Cache`](crate::Cache) and crate::core.
/// [`Flights`](crate::core::flights::Flights)
/* crate::store::Local /* nested crate::cache */ crate::core */
fn f() {
    let a = "crate::store::Local";
    let b = r#"crate::cache::Cache "quoted" "#;
    let c = '{';
    let d = '"';
    let e: &'static str = "\" crate::cache";
    let g = crate::key::Key; // crate::cache::Cache
}
"##;
    let krate = layout_for_tests(&[("src/model/x.rs", text)]);
    let refs = references_of(&krate, "src/model/x.rs");
    let written: Vec<&str> = refs.iter().map(|r| r.written.as_str()).collect();
    assert_eq!(written, ["crate::key::Key"]);
    assert_eq!(refs[0].line, 10);
}

#[test]
fn parser_skips_test_items_only() {
    let text = "use crate::error::Error;\n\
                #[cfg(test)]\npub(crate) fn helper() { crate::cache::Cache; }\n\
                pub(crate) fn live() { crate::key::Key; }\n\
                #[cfg(test)]\n#[allow(unused)]\nmod tests {\n    use crate::Cache;\n    fn t() { let x = '}'; }\n}\n\
                #[cfg(test)]\nmod more;\n";
    let krate = layout_for_tests(&[
        ("src/model/x.rs", text),
        ("src/model/x/more.rs", "use crate::cache::Cache;\n"),
    ]);
    let refs = references_of(&krate, "src/model/x.rs");
    let written: Vec<&str> = refs.iter().map(|r| r.written.as_str()).collect();
    assert_eq!(written, ["crate::error::Error", "crate::key::Key"]);
    let more = krate.files.iter().find(|f| f.rel == "src/model/x/more.rs");
    assert!(krate.is_test_only(more.expect("present")));
    let x = krate.files.iter().find(|f| f.rel == "src/model/x.rs");
    assert!(!krate.is_test_only(x.expect("present")));
}

#[test]
fn parser_resolves_super_and_root_re_exports() {
    let krate = layout_for_tests(&[(
        "src/core/stats.rs",
        "use super::flights::Flights;\nuse super::super::store::Local;\n\
         fn f() -> crate::Error { let _ = crate::global(); let _ = crate::core::flights::Flights::<u8>::new(); }\n\
         pub(crate) fn g() {}\npub(in crate::core) fn h() {}\n",
    )]);
    let refs = references_of(&krate, "src/core/stats.rs");
    let abs: Vec<String> = refs.iter().map(|r| r.abs.join("::")).collect();
    assert_eq!(
        abs,
        [
            "core::flights::Flights",
            "store::Local",
            "error::Error",
            "cache::global",
            "core::flights::Flights",
            "core"
        ]
    );
    let via_root: Vec<bool> = refs.iter().map(|r| r.via_root).collect();
    assert_eq!(via_root, [false, false, true, true, false, false]);
}

#[test]
fn graph_skips_facades_and_finds_loops() {
    let krate = layout_for_tests(&[
        (
            "src/core/stats.rs",
            "use super::Breaker;\nuse crate::core::flights::Flights;\n",
        ),
        ("src/core/flights.rs", "use super::stats::Stats;\n"),
    ]);
    let (edges, adjacency) = krate.file_graph();
    let name = |i: usize| krate.files[i].rel.as_str();
    let named: Vec<(&str, &str)> = edges.keys().map(|&(a, b)| (name(a), name(b))).collect();
    assert_eq!(
        named,
        [
            ("src/core/flights.rs", "src/core/stats.rs"),
            ("src/core/stats.rs", "src/core/flights.rs")
        ]
    );
    let knots: Vec<Vec<usize>> = strongly_connected(&adjacency)
        .into_iter()
        .filter(|k| k.len() > 1)
        .collect();
    assert_eq!(knots.len(), 1);
    let cycle = shortest_cycle(knots[0][0], &knots[0], &adjacency);
    assert_eq!(cycle.len(), 3);
    assert_eq!(cycle.first(), cycle.last());
}

#[test]
fn fred_paths_attributes_and_citations_are_recognised() {
    let code = |text: &str| tokenize(&split_comments(text).0);
    let fred = "use fred::prelude::*;\n// fred::x\nlet s = \"fred::y\";\nfred::util::slot();\n\
                extern crate fred;\nlet f = self.fred;\nuse ::fred::types;\nx::fred::y();\n";
    assert_eq!(fred_lines(&code(fred)), [1, 4, 5, 7]);

    let attrs = "#[path = \"x.rs\"]\nmod a;\n\
                 #[cfg_attr(not(feature = \"redis\"), path = \"y.rs\")]\nmod b;\n\
                 #[doc = \"path = z\"]\nfn path() { let path = 1; }\n";
    assert_eq!(path_attribute_lines(&code(attrs)), [1, 3]);

    assert_eq!(cites("//! Seed 002's lesson"), Some("seed [0-9]"));
    assert_eq!(cites("/// as the seed prescribes"), Some("the seed"));
    assert_eq!(cites("// see shared/notes.md"), Some("shared/"));
    assert_eq!(cites("// the Seed’s table"), Some("the seed"));
    assert_eq!(cites("// a random seed for proptest"), None);
    let text = "fn f() {\n    let s = \"the seed\"; // fine\n}\n#[doc = \"Shared notes say\"]\nfn g() {}\n";
    let found: Vec<usize> = citations(text).into_iter().map(|(l, _, _)| l).collect();
    assert_eq!(found, [4]);
}

/// The target layout, used the way it is meant to be: every rule is satisfied.
fn tidy_layout() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "src/lib.rs",
            "mod key; mod error; mod model; mod store; mod redis; mod core; mod coherence;\n\
             mod cache; pub mod layer; pub mod admin;\n\
             pub use cache::{global, Cache};\npub use error::Error;\npub use key::Key;\n",
        ),
        ("src/error.rs", "pub enum Error { Redis(String) }\n"),
        (
            "src/key/mod.rs",
            "mod escape;\nuse crate::error::Error;\npub struct Key;\n",
        ),
        ("src/key/escape.rs", "use super::Key;\n"),
        (
            "src/model/mod.rs",
            "mod options;\npub use self::options::EntryOptions;\nuse crate::key::Key;\n",
        ),
        (
            "src/model/options.rs",
            "use crate::key::Key;\npub struct EntryOptions;\n",
        ),
        (
            "src/store/local.rs",
            "use moka::sync::Cache as Moka;\nuse crate::model::EntryOptions;\nuse super::Codec;\n",
        ),
        (
            "src/store.rs",
            "pub mod local;\npub use self::local::Local;\npub struct Codec;\n",
        ),
        (
            "src/redis/mod.rs",
            "use fred::prelude::*;\nuse crate::error::Error;\n\
             impl From<fred::error::Error> for Error { }\n",
        ),
        (
            "src/core/mod.rs",
            "mod breaker;\nuse crate::store::local::Local;\nuse crate::redis::Redis;\n\
             pub struct Core { b: breaker::Breaker }\n",
        ),
        (
            "src/core/breaker.rs",
            "use super::Core;\nuse crate::model::{EntryOptions};\n",
        ),
        (
            "src/coherence/backplane/mod.rs",
            "use super::super::core::Core;\nuse crate::redis::Redis;\n",
        ),
        ("src/coherence/mod.rs", "pub mod backplane;\n"),
        (
            "src/cache/mod.rs",
            "mod load;\nuse crate::coherence::backplane::Backplane;\npub struct Cache;\n",
        ),
        (
            "src/cache/load.rs",
            "use super::Cache;\nuse crate::core::Core;\n",
        ),
        (
            "src/layer/mod.rs",
            "use crate::Cache;\nuse crate::cache::Cache as C;\nfn f() { crate::global(); }\n",
        ),
        ("src/admin.rs", "use crate::{Cache, Error, Key};\n"),
    ]
}

#[test]
fn a_tidy_layout_passes() {
    let krate = crate_of(&tidy_layout());
    assert_eq!(arrow_violations(&krate), []);
    assert_eq!(loop_violations(&krate), []);
    assert_eq!(fred_violations(&krate), []);
    assert_eq!(cache_violations(&krate), []);
    assert_eq!(path_violations(&krate), []);
}

#[test]
fn a_messy_layout_is_reported() {
    let mut files = tidy_layout();
    files.extend([
        (
            "src/redis/store_use.rs",
            "use crate::store::local::Local;\n",
        ),
        (
            "src/model/policy.rs",
            "use crate::Error;\nuse crate::core::Core;\n\n\nfn f(c: &crate::cache::Cache) {}\n",
        ),
        (
            "src/core/flights.rs",
            "use crate::core::stats::S;\nuse fred::types::Key;\n",
        ),
        ("src/core/stats.rs", "use crate::core::flights::F;\n"),
        ("src/misc.rs", "#[path = \"x.rs\"]\nmod x;\n"),
    ]);
    let krate = crate_of(&files);
    let places = |found: Vec<Violation>| -> Vec<String> {
        found
            .into_iter()
            .map(|v| format!("{}:{}", v.file, v.line))
            .collect()
    };
    let mut arrows = places(arrow_violations(&krate));
    arrows.sort();
    assert_eq!(
        arrows,
        [
            "src/misc.rs:0",            // outside the house layout
            "src/model/policy.rs:1",    // crate::Error: the front-end API
            "src/model/policy.rs:2",    // model → core: up
            "src/model/policy.rs:5",    // model → cache: up
            "src/redis/store_use.rs:1"  // redis → store: sideways
        ]
    );
    let loops = loop_violations(&krate);
    assert_eq!(loops.len(), 1);
    assert!(loops[0]
        .what
        .contains("src/core/flights.rs (line 1) → src/core/stats.rs"));
    assert_eq!(places(fred_violations(&krate)), ["src/core/flights.rs:2"]);
    assert_eq!(
        places(cache_violations(&krate)),
        ["src/misc.rs:0", "src/model/policy.rs:5"]
    );
    assert_eq!(places(path_violations(&krate)), ["src/misc.rs:1"]);
}
