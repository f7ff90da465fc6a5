//! The core stays sans-IO and deterministic: its sources name no socket, thread, clock or
//! ambient randomness. (Comments may mention them; code may not.)

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "std::net",
    "std::thread",
    "std::fs",
    "std::process",
    "Instant::now",
    "SystemTime",
    "RandomState",
    "thread_rng",
    "std::env",
];

fn visit(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in FORBIDDEN {
                    if code.contains(word) {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
}

#[test]
fn core_sources_use_no_os_facilities() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    visit(&src, &mut found);
    assert!(
        found.is_empty(),
        "the core must stay sans-IO:\n{}",
        found.join("\n")
    );
}
