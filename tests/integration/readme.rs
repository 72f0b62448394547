//! The README's examples, run as written against a private daemon, so the README cannot drift.

use crate::support::Home;

#[test]
fn readme_examples_run_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("## Examples").unwrap();
    let block = &readme[start..];
    let open = block.find("```sh\n").unwrap() + "```sh\n".len();
    let close = block[open..].find("```").unwrap();
    let script = &block[open..open + close];
    assert!(script.lines().filter(|l| l.starts_with("pubsub ")).count() >= 10, "the examples block is there");
    let home = Home::with_daemon("readme");
    // As written, except that files the examples put in /tmp go to this test's own directory, so the
    // test leaves nothing behind and two runs never share a file.
    let script = script.replace("/tmp/", &format!("{}/", home.0.display()));
    let (code, stdout, stderr) = home.sh(&format!("set -e\n{script}"));
    assert_eq!(code, 0, "README example failed:\n{stderr}");
    assert!(stdout.contains("shop.cart.add: apple"), "{stdout}");
    assert!(stdout.contains("orders.replayed"), "{stdout}");
}
