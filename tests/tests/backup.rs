//! Backups end to end on one node: a real redis workload, the agent shipping a snapshot and
//! the WAL to a local-folder bucket, `backup list` / `verify` / `now` through the CLI, the
//! chain rebuilt into an AOF directory that a fresh redis-server loads with every key, and a
//! tampered object named by `verify`.

use std::path::Path;
use std::time::Duration;
use steward_testbed::backups::*;
use steward_testbed::node::{run_cli, wait_for, Agent, NodeSpec};

#[test]
fn snapshot_and_wal_round_trip_through_the_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let (bucket, key) = (tmp.path().join("bucket"), tmp.path().join("backup.key"));
    write_key(&key);
    let started = now_ms();
    let agent = agent_with_backups(&bucket, &key);
    wait_snapshot(&agent, started);

    // A workload after the snapshot: everything of it travels as WAL.
    for i in 0..200 {
        assert_eq!(
            agent.cmd(&["SET", &format!("key:{i}"), &format!("value-{i}")]),
            "OK"
        );
    }
    agent.cmd(&["INCRBY", "counter", "42"]);
    agent.cmd(&["DEL", "key:7"]);
    wait_wal(&agent);
    let b = backup_status(&agent);
    assert!(b["uploads"].as_u64().unwrap() >= 2, "{b}");

    let list = cli(&agent, &["backup", "list"]);
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        list.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(text.contains("node-1"), "{text}");

    let verify = cli(&agent, &["backup", "verify"]);
    assert_success(&verify);

    let restored = restore_newest(&bucket, &key, &tmp.path().join("restore-1"));
    assert_eq!(restored.cmd(&["DBSIZE"]), "200");
    assert_eq!(restored.cmd(&["GET", "key:199"]), "value-199");
    assert_eq!(restored.cmd(&["GET", "key:7"]), "");
    assert_eq!(restored.cmd(&["GET", "counter"]), "42");
    drop(restored);

    // `backup now`: a new chain, and the data written before it is in its base.
    agent.cmd(&["SET", "before-now", "1"]);
    let now = cli(&agent, &["backup", "now"]);
    assert_success(&now);
    agent.cmd(&["SET", "after-now", "1"]);
    wait_wal(&agent);
    let restored = restore_newest(&bucket, &key, &tmp.path().join("restore-2"));
    assert_eq!(restored.cmd(&["GET", "before-now"]), "1");
    assert_eq!(restored.cmd(&["GET", "after-now"]), "1");
    assert_eq!(restored.cmd(&["DBSIZE"]), "202");
    drop(restored);

    // Redis kept no AOF history once it was uploaded.
    let aof: Vec<String> = std::fs::read_dir(agent.data_dir().join("appendonlydir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(aof.len(), 3, "history files left behind: {aof:?}");

    // A flipped byte in any object is named by verify.
    let victim = objects(&bucket)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("/wal/"))
        .expect("a WAL segment");
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let verify = cli(&agent, &["backup", "verify"]);
    let err = String::from_utf8_lossy(&verify.stderr).to_string();
    assert!(!verify.status.success());
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains(&name), "verify did not name {name}: {err}");
    agent.stop().unwrap();
}

#[test]
fn a_store_outage_loses_nothing_and_a_full_spool_is_loud() {
    let tmp = tempfile::tempdir().unwrap();
    let (bucket, key) = (tmp.path().join("bucket"), tmp.path().join("backup.key"));
    write_key(&key);
    let started = now_ms();
    let agent = agent_with_backups_extra(&bucket, &key, "spool_limit_mb = 1\n");
    wait_snapshot(&agent, started);

    // The store goes away: the bucket folder is replaced by a plain file.
    let away = tmp.path().join("bucket-away");
    std::fs::rename(&bucket, &away).unwrap();
    std::fs::write(&bucket, b"not a folder").unwrap();
    let big = "x".repeat(10_000);
    for i in 0..300 {
        assert_eq!(agent.cmd(&["SET", &format!("during:{i}"), &big]), "OK");
    }
    let loud = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        let s = agent.status().unwrap();
        let b = &s["backup"];
        let warned = s["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap_or("").contains("backup spool full"));
        (b["state"] == "failing" && b["spool_full"] == true && warned).then_some(())
    });
    assert!(loud.is_some(), "no alarm: {}", agent.status().unwrap());
    assert!(agent.log().contains("backup spool full"));
    let metrics = agent.api_get("/metrics").unwrap();
    assert!(
        metrics.contains("redis_steward_backup_spool_full 1"),
        "{metrics}"
    );

    // It comes back: everything written meanwhile arrives.
    std::fs::remove_file(&bucket).unwrap();
    std::fs::rename(&away, &bucket).unwrap();
    wait_wal(&agent);
    assert_eq!(backup_status(&agent)["spool_full"], false);
    let restored = restore_newest(&bucket, &key, &tmp.path().join("restore"));
    assert_eq!(restored.cmd(&["DBSIZE"]), "300");
    assert_eq!(restored.cmd(&["STRLEN", "during:299"]), "10000");
    drop(restored);
    agent.stop().unwrap();
}

/// A single node backing up to `url` (with object_store `options`) and restored from it:
/// snapshot + WAL through a real object-store server.
/// A node backing up to `url` with object-store `options`, sealing with `key`.
fn spec_with_store(
    url: &str,
    options: &std::collections::BTreeMap<String, String>,
    key: &Path,
) -> NodeSpec {
    let toml_options: String = options
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let mut spec = NodeSpec::new("node-1");
    spec.extra = format!(
        "\n[backup]\nurl = \"{url}\"\nkey_file = \"{}\"\nwal_interval_ms = 200\n\n[backup.options]\n{toml_options}",
        key.display()
    );
    spec
}

fn round_trip_through(url: &str, options: &std::collections::BTreeMap<String, String>) {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("backup.key");
    write_key(&key);
    let started = now_ms();
    let agent = Agent::prepare(spec_with_store(url, options, &key)).unwrap();
    agent.start_healthy().unwrap();
    wait_snapshot(&agent, started);
    for i in 0..100 {
        agent.cmd(&["RPUSH", "list", &i.to_string()]);
    }
    wait_wal(&agent);
    let verify = cli(&agent, &["backup", "verify"]);
    assert_success(&verify);
    let list = cli(&agent, &["backup", "list", "--json"]);
    assert_success(&list);
    let j: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(j["chains"][0]["state"], "open", "{j:#}");
    assert_eq!(j["owners"], serde_json::json!(["test-ds"]), "{j:#}");
    assert!(
        j["newest_point"]["unix_ms"].as_u64().unwrap() >= started,
        "{j:#}"
    );
    let restored = restore_newest_from(url, options, &key, &tmp.path().join("restore"));
    assert_eq!(restored.cmd(&["LLEN", "list"]), "100", "WAL incomplete");
    assert_eq!(restored.cmd(&["LINDEX", "list", "99"]), "99");
    drop(restored);
    agent.stop().unwrap();
}

#[test]
fn backups_round_trip_through_an_s3_server() {
    let moto = steward_testbed::s3::MotoServer::start().unwrap();
    moto.create_bucket("backups").unwrap();
    round_trip_through("s3://backups/ds-1", &moto.options());
}

#[test]
fn backups_round_trip_through_azurite() {
    let azurite = steward_testbed::azurite::AzuriteServer::start().unwrap();
    azurite.create_container("backups").unwrap();
    round_trip_through("az://backups/ds-1", &azurite.options());
}

/// The chains in a bucket: (epoch, node) of each, oldest first, from the object names.
fn chains(bucket: &Path) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, u64, String)> = std::fs::read_dir(bucket.join("backup"))
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().to_string();
                let id: redis_steward::backup::catalog::ChainId = name.parse().ok()?;
                Some((id.start_unix_ms, id.epoch, id.node))
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, e, n)| (e, n)).collect()
}

#[test]
fn a_failover_starts_a_new_chain_on_the_new_primary() {
    use steward_testbed::cluster::{Cluster, Options};
    let c = Cluster::start_with(
        "premium",
        Options {
            backups: true,
            ..Options::default()
        },
    )
    .unwrap();
    let old = c.wait_settled(Duration::from_secs(60)).unwrap();
    let epoch = c.epoch(old).unwrap();
    let first = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        let ch = chains(&c.bucket());
        ch.iter().any(|(e, _)| *e == epoch).then_some(ch)
    })
    .expect("the first primary's chain");
    assert!(
        first.iter().all(|(_, n)| *n == format!("node-{old}")),
        "only the primary uploads: {first:?}"
    );
    assert_eq!(c.cli(old, &["SET", "before-failover", "1"]), "OK");
    // Replication is asynchronous: let both replicas have the write before the primary dies.
    assert_eq!(c.cli(old, &["WAIT", "2", "5000"]), "2");
    c.bed.kill_all(old).unwrap();
    let new = c.wait_new_primary(old, Duration::from_secs(30)).unwrap();
    let new_epoch = c.epoch(new).unwrap();
    let chain = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        chains(&c.bucket())
            .into_iter()
            .find(|(e, n)| *e == new_epoch && *n == format!("node-{new}"))
    });
    assert!(
        chain.is_some(),
        "no chain of epoch {new_epoch} by node-{new}: {:?}",
        chains(&c.bucket())
    );
    // The new chain restores with the data of before the failover.
    assert_eq!(c.cli(new, &["SET", "after-failover", "1"]), "OK");
    let tmp = tempfile::tempdir().unwrap();
    // Wait for that write to be shipped (the new primary's status has the cursor).
    let shipped = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        let b = c.nodes[new].status()?["backup"].clone();
        (b["lag_bytes"] == 0 && b["wal_offset"].as_u64()? > 0).then_some(())
    });
    assert!(shipped.is_some(), "{:?}", c.nodes[new].status());
    let restored = restore_newest(&c.bucket(), &c.backup_key(), &tmp.path().join("r"));
    assert_eq!(restored.cmd(&["GET", "before-failover"]), "1");
    assert_eq!(restored.cmd(&["GET", "after-failover"]), "1");
}

#[test]
fn a_rotated_key_seals_new_objects_while_old_ones_stay_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let (old_key, new_key) = (tmp.path().join("old.key"), tmp.path().join("new.key"));
    write_key(&old_key);
    write_key(&new_key);
    let started = now_ms();
    let agent = agent_with_backups(&bucket, &old_key);
    wait_snapshot(&agent, started);
    agent.cmd(&["SET", "sealed-with", "old"]);
    wait_wal(&agent);
    agent.stop().unwrap();

    // Rotate: the new key seals, the old one only opens.
    let mut spec = agent.spec.clone();
    spec.extra = format!(
        "\n[backup]\nurl = \"file://{}\"\nkey_file = \"{}\"\nprevious_key_files = [\"{}\"]\nwal_interval_ms = 200\n",
        bucket.display(),
        new_key.display(),
        old_key.display()
    );
    drop(agent);
    let started = now_ms();
    let agent = Agent::prepare(spec).unwrap();
    agent.start_healthy().unwrap();
    wait_snapshot(&agent, started);
    agent.cmd(&["SET", "sealed-with", "new"]);
    wait_wal(&agent);
    assert_success(&cli(&agent, &["backup", "verify"]));
    let restored = restore_newest_from(
        &format!("file://{}", bucket.display()),
        &Default::default(),
        &new_key,
        &tmp.path().join("restore"),
    );
    assert_eq!(restored.cmd(&["GET", "sealed-with"]), "new");
    drop(restored);

    // Without the old key, the old chain's objects fail verification, named.
    let mut spec = agent.spec.clone();
    spec.extra = format!(
        "\n[backup]\nurl = \"file://{}\"\nkey_file = \"{}\"\n",
        bucket.display(),
        new_key.display()
    );
    agent.stop().unwrap();
    drop(agent);
    let lone = Agent::prepare(spec).unwrap();
    let config = lone.config_path.to_string_lossy().to_string();
    let out = run_cli(&["backup", "verify", "--config", &config]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(err.contains("not in the key ring"), "{err}");
}

/// Retention end to end (Startup plan: one day of history). Chains from earlier days are put
/// into the bucket beside the agent's own, sealed with its key under names that carry their
/// old start and upload times — which is all retention reads, so no clock is faked. After
/// `backup now` the agent's prune has deleted the chain whose window ended days ago and the
/// orphan (no base), kept the chain that still reaches into the last day, and kept its own
/// chains; everything left verifies and the newest chain restores.
#[test]
fn retention_prunes_expired_chains_and_keeps_the_newest_restorable_one() {
    use redis_steward::backup::catalog::{ChainId, ObjectName};
    let tmp = tempfile::tempdir().unwrap();
    let (bucket, key) = (tmp.path().join("bucket"), tmp.path().join("backup.key"));
    write_key(&key);
    let started = now_ms();
    let agent = agent_with_backups(&bucket, &key);
    wait_snapshot(&agent, started);
    assert_eq!(agent.cmd(&["SET", "kept", "1"]), "OK");
    wait_wal(&agent);
    let (epoch, _) = chains(&bucket)[0].clone();

    // A real RDB as the old chains' base, so `backup verify` can open every object.
    let aof = agent.data_dir().join("appendonlydir");
    let manifest = std::fs::read_to_string(aof.join("appendonly.aof.manifest")).unwrap();
    let base_name = manifest
        .lines()
        .find(|l| l.ends_with("type b"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    let rdb = std::fs::read(aof.join(base_name)).unwrap();
    let keys = redis_steward::backup::keys::KeyRing::load(&key, &[]).unwrap();
    let put = |name: ObjectName, data: &[u8]| {
        let path = name.path();
        let sealed = redis_steward::backup::format::seal_all(&path, &keys, 1, data).unwrap();
        let file = bucket.join(&path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, sealed).unwrap();
    };
    const HOUR: u64 = 3_600_000;
    let now = now_ms();
    // A chain started `start_h` hours ago and ended `end_h` hours ago, with or without a base.
    let old_chain = |start_h: u64, end_h: u64, base: bool| {
        let chain = ChainId::new(now - start_h * HOUR, epoch, "node-1").unwrap();
        if base {
            let seq = 1;
            put(
                ObjectName::Base {
                    chain: chain.clone(),
                    seq,
                },
                &rdb,
            );
        }
        let unix_ms = now - end_h * HOUR;
        put(
            ObjectName::End {
                chain: chain.clone(),
                unix_ms,
            },
            b"end of chain",
        );
        chain
    };
    // Expired: its window ended five days ago.
    let expired = old_chain(120, 119, true);
    // An orphan: an end marker without a base (a prune that was cut short).
    let orphan = old_chain(72, 71, false);
    // Still inside the last day: its window ended twelve hours ago.
    let recent = old_chain(20, 12, true);
    let before = chains(&bucket).len();
    assert_eq!(before, 4, "{:?}", chains(&bucket));

    assert_success(&cli(&agent, &["backup", "now"]));
    // The chains that still have objects (the local folder keeps emptied directories).
    let live = || -> std::collections::BTreeSet<String> {
        objects(&bucket)
            .iter()
            .filter_map(|p| {
                let rel = p.strip_prefix(bucket.join("backup")).ok()?;
                Some(rel.iter().next()?.to_string_lossy().to_string())
            })
            // The owner marker is not a chain.
            .filter(|n| !n.starts_with("owner-"))
            .collect()
    };
    let pruned = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        let l = live();
        (!l.contains(&expired.to_string()) && !l.contains(&orphan.to_string())).then_some(())
    });
    assert!(
        pruned.is_some(),
        "not pruned: {:?}\n{}",
        objects(&bucket),
        agent.log()
    );
    // Three objects in all: the expired chain's base and end marker, and the orphan. The
    // agent logs a prune after its deletions (so the objects can be gone before the line is
    // written), and the prune after its first snapshot may still be listing while the old
    // chains are put and take some of them: wait for the lines, and add them up.
    let pruned_in_log = || -> usize {
        agent
            .log()
            .lines()
            .filter_map(|l| l.split("pruned by retention objects=").nth(1))
            .filter_map(|n| n.split_whitespace().next()?.parse::<usize>().ok())
            .sum()
    };
    wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        (pruned_in_log() >= 3).then_some(())
    });
    assert_eq!(pruned_in_log(), 3, "{}", agent.log());
    // The recent chain, the agent's first chain and the new one are all still there.
    assert!(bucket.join(recent.dir()).join("base-000001.rsb").exists());
    assert!(live().contains(&recent.to_string()));
    assert_eq!(live().len(), 3, "{:?}", objects(&bucket));
    assert_success(&cli(&agent, &["backup", "verify"]));
    let restored = restore_newest(&bucket, &key, &tmp.path().join("restore"));
    assert_eq!(restored.cmd(&["GET", "kept"]), "1");
    drop(restored);
    agent.stop().unwrap();
}

/// Issue 13: `backup verify` checks continuity, not only the objects that exist: a deleted
/// WAL segment in the middle of a chain and a deleted base each make it exit non-zero, naming
/// the gap or the missing base, with a summary line.
#[test]
fn verify_fails_on_a_wal_gap_and_on_a_missing_base() {
    let tmp = tempfile::tempdir().unwrap();
    let (bucket, key) = (tmp.path().join("bucket"), tmp.path().join("backup.key"));
    write_key(&key);
    let agent = agent_with_backups(&bucket, &key);
    wait_snapshot(&agent, 0);
    // Writes over ~2 s: several 200 ms segments.
    for i in 0..20 {
        assert_eq!(agent.cmd(&["SET", &format!("k{i}"), "v"]), "OK");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_wal(&agent);
    agent.stop().unwrap();
    let cfg = agent.config_path.clone();
    let text = |o: &std::process::Output| {
        format!(
            "exit {:?}\n{}{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let verify = |config: &Path| {
        let c = config.to_string_lossy().to_string();
        run_cli(&["backup", "verify", "--config", &c])
    };
    let out = verify(&cfg);
    println!("intact:\n{}", text(&out));
    assert_success(&out);

    // A copy of the bucket with one object removed, and a config pointing at it.
    let damaged = |name: &str, remove: &dyn Fn(&[std::path::PathBuf]) -> std::path::PathBuf| {
        let b = tmp.path().join(name);
        assert!(std::process::Command::new("cp")
            .arg("-a")
            .arg(&bucket)
            .arg(&b)
            .status()
            .unwrap()
            .success());
        let victim = remove(&objects(&b));
        std::fs::remove_file(&victim).unwrap();
        let c = tmp.path().join(format!("{name}.toml"));
        let body = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(bucket.to_str().unwrap(), b.to_str().unwrap());
        std::fs::write(&c, body).unwrap();
        (victim, c)
    };
    let mut failures = Vec::new();

    let (victim, c) = damaged("gap", &|objs| {
        let segs: Vec<_> = objs
            .iter()
            .filter(|p| p.to_string_lossy().contains("/wal/"))
            .cloned()
            .collect();
        assert!(segs.len() >= 3, "too few segments: {segs:?}");
        segs[segs.len() / 2].clone()
    });
    let out = verify(&c);
    let msg = text(&out);
    println!("deleted middle segment {}:\n{msg}", victim.display());
    if out.status.success() || !msg.contains("gap") {
        failures.push(format!("a deleted middle segment: {msg}"));
    }

    let (victim, c) = damaged("nobase", &|objs| {
        objs.iter()
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("base-")
            })
            .unwrap()
            .clone()
    });
    let out = verify(&c);
    let msg = text(&out);
    println!("deleted base {}:\n{msg}", victim.display());
    if out.status.success() || !msg.contains("base") {
        failures.push(format!("a deleted base: {msg}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A hung store (moto stopped mid-run, so every request waits for the store's timeout): the
/// lag counts from the first second, not from when the hung upload gives up; `backup now`
/// answers with the cause instead of waiting in silence; failures are counted.
#[test]
fn a_hung_store_shows_its_lag_at_once_and_backup_now_says_why() {
    let moto = steward_testbed::s3::MotoServer::start().unwrap();
    moto.create_bucket("backups").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("backup.key");
    write_key(&key);
    let started = now_ms();
    let agent =
        Agent::prepare(spec_with_store("s3://backups/ds-1", &moto.options(), &key)).unwrap();
    agent.start_healthy().unwrap();
    wait_snapshot(&agent, started);
    assert_eq!(agent.cmd(&["SET", "before", "1"]), "OK");
    wait_wal(&agent);
    let metric = |name: &str| -> Option<f64> {
        let text = agent.api_get("/metrics")?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("redis_steward_{name} "))?
                .parse()
                .ok()
        })
    };
    assert_eq!(metric("backup_enabled"), Some(1.0));
    assert!(
        metric("backup_uploads_total").unwrap() >= 2.0,
        "a base and a segment"
    );
    assert!(metric("backup_uploaded_bytes_total").unwrap() > 0.0);
    assert!(metric("backup_last_snapshot_size_bytes").unwrap() > 0.0);
    assert!(metric("backup_last_snapshot_duration_seconds").is_some());
    let newest = metric("backup_newest_restorable_timestamp_seconds").unwrap();
    assert!(newest * 1000.0 >= started as f64 - 1000.0, "{newest}");
    assert_eq!(metric("backup_upload_failures_total"), Some(0.0));

    moto.pause(true);
    let hung_at = std::time::Instant::now();
    assert_eq!(agent.cmd(&["SET", "during", "1"]), "OK");
    std::thread::sleep(Duration::from_millis(4_500));
    // Still inside the first hung upload (the store's timeout is 10 s).
    let lag = backup_status(&agent)["lag_seconds"].as_u64().unwrap();
    let lag_metric = metric("backup_lag_seconds").unwrap();
    assert!(
        hung_at.elapsed() < Duration::from_secs(9),
        "the test itself was too slow to look inside the hang"
    );
    assert!(
        lag >= 4 && lag_metric >= 4.0,
        "lag {lag} s / {lag_metric} s after 4.5 s of a hung upload"
    );

    // `backup now` answers with the store's error (bounded: a hang here fails the test).
    let (tx, rx) = std::sync::mpsc::channel();
    let config = agent.config_path.to_string_lossy().to_string();
    std::thread::spawn(move || {
        let _ = tx.send(run_cli(&["backup", "now", "--config", &config]));
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("`backup now` still waiting after 60 s of a hung store");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("timed out"), "the cause is named: {said}");
    assert!(metric("backup_upload_failures_total").unwrap() >= 1.0);

    // The store returns: everything arrives, the lag ends.
    moto.pause(false);
    wait_wal(&agent);
    let settled = wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        (backup_status(&agent)["lag_seconds"] == 0).then_some(())
    });
    assert!(settled.is_some(), "{}", backup_status(&agent));
    agent.stop().unwrap();
}

/// Two data stores configured with the same backup location: before owner markers the second
/// restored the first one's data as its own at its first start, and its retention (Hobbyist:
/// only the newest chain) pruned the first one's chain. Now the location is the first one's
/// (`backup/owner-ds-a`): the second refuses to start from it, to back up or prune into it,
/// and `restore` with its configuration refuses too.
#[test]
fn two_data_stores_never_share_a_backup_location() {
    let tmp = tempfile::tempdir().unwrap();
    let (bucket, key) = (tmp.path().join("bucket"), tmp.path().join("backup.key"));
    write_key(&key);
    let url = format!("file://{}", bucket.display());
    let mut spec = spec_with_store(&url, &Default::default(), &key);
    spec.data_store_id = "ds-a".into();
    let started = now_ms();
    let a = Agent::prepare(spec).unwrap();
    a.start_healthy().unwrap();
    wait_snapshot(&a, started);
    assert_eq!(a.cmd(&["SET", "owner", "ds-a"]), "OK");
    wait_wal(&a);
    let a_chains = chains(&bucket);
    assert_eq!(a_chains.len(), 1, "{a_chains:?}");

    let mut spec = spec_with_store(&url, &Default::default(), &key);
    spec.data_store_id = "ds-b".into();
    spec.plan = "hobbyist".into();
    let b = Agent::prepare(spec).unwrap();
    b.start().unwrap();
    let code = b.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(code, Some(1), "{}", b.log());
    assert!(
        b.log().contains("belong to data store ds-a"),
        "the refusal names the owner: {}",
        b.log()
    );
    assert!(
        !b.data_dir().join("appendonlydir").exists(),
        "nothing restored"
    );

    // Started empty on purpose, it still writes and prunes nothing there.
    b.start_with(|c| {
        c.arg("--start-empty");
    })
    .unwrap();
    b.wait_healthy(Duration::from_secs(30)).unwrap();
    let refused = wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        let st = backup_status(&b);
        (st["state"] == "failing"
            && st["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("belong to data store ds-a")))
        .then_some(())
    });
    assert!(refused.is_some(), "{}", backup_status(&b));
    assert_eq!(b.cmd(&["SET", "owner", "ds-b"]), "OK");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(chains(&bucket), a_chains, "ds-b wrote or pruned a chain");
    assert!(bucket.join("backup/owner-ds-a").exists());
    assert!(!bucket.join("backup/owner-ds-b").exists());

    let out = cli(
        &b,
        &[
            "restore",
            "--target",
            tmp.path().join("r").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belong to data store ds-a"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ds-a's own backups are whole.
    let restored = restore_newest(&bucket, &key, &tmp.path().join("restore-a"));
    assert_eq!(restored.cmd(&["GET", "owner"]), "ds-a");
    b.stop().unwrap();
    a.stop().unwrap();
}

/// Issue 13 item 2: a restarted agent waited for a whole new snapshot before it shipped any
/// WAL, so every write since the start was unprotected for as long as a snapshot takes
/// (seconds per GB). Now it goes on with its open chain: no new chain at the restart, the
/// writes after it in the same chain's WAL right away, and the chain still whole.
#[test]
fn a_restart_goes_on_with_its_chain_without_a_new_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (bucket, key) = (tmp.path().join("bucket"), tmp.path().join("backup.key"));
    write_key(&key);
    let agent = agent_with_backups(&bucket, &key);
    wait_snapshot(&agent, 0);
    assert_eq!(agent.cmd(&["SET", "before", "1"]), "OK");
    wait_wal(&agent);
    let before = chains(&bucket);
    assert_eq!(before.len(), 1, "{before:?}");

    agent.stop().unwrap();
    agent.start_healthy().unwrap();
    assert_eq!(agent.cmd(&["SET", "after", "1"]), "OK");
    wait_wal(&agent);
    assert!(
        agent
            .log()
            .contains("resuming this node's chain where it stopped"),
        "{}",
        agent.log()
    );
    assert_eq!(chains(&bucket), before, "a new chain at the restart");
    assert_success(&cli(&agent, &["backup", "verify"]));
    let restored = restore_newest(&bucket, &key, &tmp.path().join("restore"));
    assert_eq!(restored.cmd(&["MGET", "before", "after"]), "1\n1");
    drop(restored);
    agent.stop().unwrap();
}
