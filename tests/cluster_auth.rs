//! Hostile connections while a job runs: no token, wrong token, random
//! bytes, an oversized frame, a wrong protocol version. Each is refused
//! and the driver finishes its job with the right answer.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::time::Duration;

use helpers::{corpus, driver, executor, read_counts, submit, wait_executors};
use kiln_runtime::transport::{self, JoinToken, Role, PROTOCOL_VERSION};
use kiln_runtime::Error;

const T: Duration = Duration::from_secs(10);

async fn refused_status(join: &str, pre: &[u8]) -> Option<u8> {
    let (token, addr) = transport::parse_join(join).unwrap();
    let conn = transport::connect_tls(addr, &token, T).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(pre).await.unwrap();
    let _ = send.finish();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(T, recv.read_exact(&mut b))
        .await
        .expect("driver answers");
    // The driver closes the connection after a refusal.
    let closed = tokio::time::timeout(T, conn.closed()).await;
    assert!(closed.is_ok(), "connection left open after refusal");
    r.ok().map(|()| b[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connections_are_refused_while_the_driver_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let expected = corpus(&input, 8, 100);
    let out = dir.path().join("counts.tsv");
    let (_d, join) = driver(&[]);
    let _a = executor(&join, "a");
    let _b = executor(&join, "b");
    let j = join.clone();
    tokio::task::spawn_blocking(move || wait_executors(&j, 2, Duration::from_secs(60)))
        .await
        .unwrap();
    let mut d = submit(
        &join,
        &[
            "word-count",
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "8",
            "--slow-ms",
            "400",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    let (token, addr) = transport::parse_join(&join).unwrap();

    // Wrong token (right CA): refused with a reason.
    let wrong = JoinToken {
        secret: [0x5a; 32],
        ca_fingerprint: token.ca_fingerprint,
    };
    match transport::connect_and_handshake(addr, &wrong, Role::Executor, T).await {
        Err(Error::Refused { reason, .. }) => assert!(reason.contains("token"), "{reason}"),
        other => panic!("wrong token not refused: {:?}", other.map(|_| ())),
    }
    // Wrong protocol version.
    let pre = transport::preamble(PROTOCOL_VERSION + 1, &token.secret, Role::Executor);
    assert_eq!(
        refused_status(&join, &pre).await,
        Some(transport::STATUS_BAD_VERSION)
    );
    // Random bytes instead of a preamble.
    let garbage: Vec<u8> = (0..transport::PREAMBLE_LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
        .collect();
    assert_eq!(
        refused_status(&join, &garbage).await,
        Some(transport::STATUS_BAD_MAGIC)
    );
    // No token at all: the stream ends before a preamble.
    assert_eq!(refused_status(&join, &[]).await, None);
    // Random UDP datagrams at the QUIC port are ignored.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..20u8 {
        let _ = udp.send_to(&[i; 1200], addr);
    }
    // A client with the wrong CA fingerprint refuses the driver.
    let wrong_ca = JoinToken {
        secret: token.secret,
        ca_fingerprint: [1; 32],
    };
    assert!(transport::connect_tls(addr, &wrong_ca, T).await.is_err());
    // Valid handshake, then an oversized frame: the connection is closed.
    let (conn, mut send, _recv) = transport::connect_and_handshake(addr, &token, Role::Executor, T)
        .await
        .unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    // The driver may close the connection on the length alone, before the
    // rest arrives: the write may fail, the close reason is what counts.
    let _ = send.write_all(&[0u8; 64]).await;
    let reason = tokio::time::timeout(T, conn.closed())
        .await
        .expect("closed after oversized frame");
    assert!(
        matches!(reason, transport::quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == transport::CLOSE_PROTOCOL.into()),
        "{reason:?}"
    );

    // The job still completes, exactly.
    let lines = tokio::task::spawn_blocking(move || {
        let l = d.rest(Duration::from_secs(90));
        (l, d)
    })
    .await
    .unwrap()
    .0;
    assert!(lines.iter().any(|l| l.starts_with("DONE")), "{lines:?}");
    let refused: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("REFUSED "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(refused >= 4, "refused {refused}");
    assert_eq!(read_counts(&out), expected);
}

#[test]
fn a_driver_with_user_certificates_runs_a_job_and_names_a_bad_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["driver.example".to_string()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["other".to_string()]).unwrap();
    let cert = dir.path().join("driver.crt");
    let key = dir.path().join("driver.key");
    let wrong_key = dir.path().join("other.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(&wrong_key, other.signing_key.serialize_pem()).unwrap();
    let (cert, key, wrong_key) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        wrong_key.to_str().unwrap(),
    );

    // A key of another certificate: the driver exits at once naming the file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "driver",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert,
            "--key",
            wrong_key,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running kiln driver");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("other.key") && err.contains("does not match"),
        "{err}"
    );

    // The right pair: the token pins the user's certificate and a job runs.
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let expected = corpus(&input, 4, 50);
    let counts = dir.path().join("counts.tsv");
    let (_d, join) = driver(&["--cert", cert, "--key", key]);
    let (token, _) = transport::parse_join(&join).unwrap();
    assert_eq!(token.ca_fingerprint, transport::fingerprint(ck.cert.der()));
    let _e = executor(&join, "a");
    let mut d = submit(
        &join,
        &[
            "word-count",
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "4",
            "--output",
            counts.to_str().unwrap(),
        ],
    );
    let lines = d.rest(Duration::from_secs(60));
    assert!(lines.iter().any(|l| l.starts_with("DONE")), "{lines:?}");
    assert_eq!(read_counts(&counts), expected);
}
