//! The dashboard in a real browser: headless Chromium (driven by playwright-core from
//! tests/js/dashboard.mjs) loads the page from a running broker, sees its numbers change while
//! a bounded load runs, watches a topic over MQTT-over-WebSocket, and saves a screenshot to
//! `target/tmp/` (`dashboard.png`, `dashboard-login.png`).

mod common;

use bytes::Bytes;
use common::{tool_missing, Broker, Raw};
use ringcast::protocol::{MqttString, QoS, Version};
use ringcast::security::password::hash_password;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Messages the load sends at most, whatever the browser does.
const LOAD_MESSAGES_MAX: usize = 20_000;

/// Why the browser test cannot run here, if it cannot.
fn missing_tool(js: &Path) -> Option<String> {
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    if !js.join("node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed (npm ci --prefix tests/js)".into());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    (!Path::new(&chromium).exists()).then(|| format!("{chromium} is not installed"))
}

/// A user of the password file, its password.
type Credentials = (&'static str, &'static str);

#[test]
fn the_dashboard_shows_a_live_broker_and_watches_a_topic_in_chromium() {
    check_dashboard("dashboard.png", None);
}

#[test]
fn with_a_password_file_the_dashboard_and_its_mqtt_connection_use_the_login() {
    // Without credentials the MQTT listeners refuse anonymous clients here, so the watcher
    // receiving messages shows the page logged in over MQTT with the browser's credentials.
    check_dashboard("dashboard-login.png", Some(("admin", "secret")));
}

fn check_dashboard(picture: &str, login: Option<Credentials>) {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if let Some(why) = missing_tool(&js) {
        tool_missing(&why);
        return;
    }
    let dir = std::env::temp_dir().join(format!("ringcast-dash-{}-{picture}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let passwd = dir.join("passwd");
    if let Some((user, password)) = login {
        let hash = hash_password(password.as_bytes(), 1000).expect("a hash");
        std::fs::write(&passwd, format!("{user}:{hash}\n")).expect("password file");
    }
    let broker = Broker::start_with(2, |config| {
        config.ws_listen = vec!["127.0.0.1:0".parse().unwrap()];
        if let Some((user, _)) = login {
            config.password_file = Some(passwd.clone());
            config.http_users = vec![user.to_string()];
        }
    });
    let addrs = broker.addrs();
    let (mqtt, http) = (addrs[0], addrs[1]);
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(picture);
    let _ = std::fs::remove_file(&screenshot);
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let done = done.clone();
        std::thread::spawn(move || run_load(mqtt, login, &done))
    };
    let mut node = Command::new("node");
    node.arg(js.join("dashboard.mjs"))
        .arg(format!("http://{http}/"))
        .arg(&screenshot);
    if let Some((user, password)) = login {
        node.args([user, password]);
    }
    let output = node
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("node runs");
    done.store(true, Ordering::SeqCst);
    load.join().expect("the load finishes");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the dashboard check failed: {said}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 3.1.1 client, logged in with `login` when given.
fn connect(mqtt: SocketAddr, client_id: &str, login: Option<Credentials>) -> Raw {
    let mut connect = common::connect_packet(client_id, Version::V311, true);
    if let Some((user, password)) = login {
        connect.username = MqttString::from_str_checked(user);
        connect.password = Some(Bytes::from_static(password.as_bytes()));
    }
    Raw::connect_with(mqtt, connect).0
}

/// Publishes to `dash/<n>` (a few clients subscribe, so messages go out too) until `done` or
/// `LOAD_MESSAGES_MAX`, pacing itself so the page sees a rate over several polls.
fn run_load(mqtt: SocketAddr, login: Option<Credentials>, done: &AtomicBool) {
    let mut subscribers: Vec<Raw> = (0..3)
        .map(|i| {
            let mut sub = connect(mqtt, &format!("dash-sub-{i}"), login);
            sub.subscribe("dash/#", QoS::AtMostOnce);
            sub
        })
        .collect();
    let mut publisher = connect(mqtt, "dash-pub", login);
    let mut sent = 0;
    while !done.load(Ordering::SeqCst) && sent < LOAD_MESSAGES_MAX {
        for _ in 0..10 {
            let payload = format!("{{\"reading\":{sent}}}");
            publisher.publish(
                &format!("dash/sensor/{}", sent % 5),
                payload.as_bytes(),
                QoS::AtMostOnce,
                false,
            );
            sent += 1;
        }
        for sub in &mut subscribers {
            for _ in 0..10 {
                sub.recv_publish();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
