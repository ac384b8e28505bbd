//! A driver started with a user-supplied certificate and key: executors
//! holding its join token (which pins that certificate) join and run a job;
//! one pinned to another certificate refuses the driver.

use std::sync::Arc;
use std::time::Duration;

use kiln_runtime::transport::{fingerprint, CertificateFiles};
use kiln_runtime::{
    run_executor, Error, ExecutorConfig, JoinToken, LocalCluster, LocalConfig, Registry,
};

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.register_map("double", |x: i64| x * 2);
    Arc::new(r)
}

async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test step timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_with_a_user_certificate_admits_only_executors_pinning_it() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["driver.example".to_string()]).unwrap();
        let cert = dir.path().join("driver.crt");
        let key = dir.path().join("driver.key");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();

        let mut config = LocalConfig::in_process(2);
        config.driver.tls = Some(CertificateFiles {
            cert: cert.clone(),
            key: key.clone(),
        });
        // Both executors join with the token the driver printed.
        let cluster = LocalCluster::start(config, registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        assert_eq!(d.token().ca_fingerprint, fingerprint(ck.cert.der()));
        let ds = d.parallelize((1..=100i64).collect(), 4).unwrap();
        let doubled: Vec<i64> = ds.map::<i64>("double").unwrap().collect().await.unwrap();
        assert_eq!(doubled, (1..=100).map(|x| x * 2).collect::<Vec<_>>());

        // Right secret, pinned to a different certificate: the executor
        // refuses the driver during the TLS handshake and never registers.
        let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        let wrong = JoinToken {
            secret: d.token().secret,
            ca_fingerprint: fingerprint(other.cert.der()),
        };
        let mut ec = ExecutorConfig::new(d.addr(), wrong);
        ec.connect_timeout = Duration::from_secs(5);
        match run_executor(ec, registry()).await {
            Err(Error::Connection { reason, .. }) => {
                assert!(reason.contains("pinned"), "{reason}")
            }
            other => panic!("executor with the wrong pin was not refused: {other:?}"),
        }
        let st = d.status().await.unwrap();
        assert_eq!(st.executors.len(), 2, "{st:?}");
        cluster.shutdown().await;
    })
    .await
}
