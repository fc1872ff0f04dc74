//! The `rampart` binary never prints a store URL's password: not in labels, not in connection
//! errors, not when the URL comes from `RAMPART_DLQ_STORE`, not in `--help`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn run(args: &[&str], env: Option<&str>) -> (String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rampart"));
    c.args(args)
        .stdin(Stdio::null())
        .env_remove("RAMPART_DLQ_STORE");
    if let Some(v) = env {
        c.env("RAMPART_DLQ_STORE", v);
    }
    let o = c.output().unwrap();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn store_passwords_are_masked_everywhere() {
    let port = dead_port();
    for url in [
        format!("redis://:hunter2@127.0.0.1:{port}/0"),
        format!("redis://app:hunter2@127.0.0.1:{port}/0#dlq"),
        format!("redis://:zq9k/wv7p#xj3m?tt5r@127.0.0.1:{port}/0"),
    ] {
        let secret = url
            .split_once("://")
            .and_then(|(_, r)| r.rsplit_once('@'))
            .and_then(|(u, _)| u.split_once(':'))
            .map(|(_, p)| p.to_owned())
            .unwrap();
        for (args, env) in [
            (vec!["--store", url.as_str(), "dlq", "list"], None),
            (vec!["--store", url.as_str(), "dlq", "stats"], None),
            (vec!["dlq", "list"], Some(url.as_str())),
            (vec!["dlq", "--help"], Some(url.as_str())),
            (vec!["--help"], Some(url.as_str())),
        ] {
            let (out, err) = run(&args, env);
            let all = format!("{out}{err}");
            // Neither the password nor any piece of it (a `#` or `/` inside it must not
            // cut it into a shown part and a hidden part).
            for piece in std::iter::once(secret.as_str())
                .chain(secret.split(['/', '#', '?']).filter(|p| p.len() >= 4))
            {
                assert!(
                    !all.contains(piece),
                    "{args:?} (env {env:?}) printed {piece:?} of the password {secret:?}:\n{all}"
                );
            }
            if args.contains(&"list") {
                assert!(
                    err.contains(":***@127.0.0.1"),
                    "the error names the store: {err}"
                );
            }
        }
    }
}
