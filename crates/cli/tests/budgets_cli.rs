//! `tollgate budgets set|show|clear` as a user runs them: the built binary on a fresh
//! data directory with usage records in it. `show` reports each period's limit, what
//! the records spent, what remains and when it resets; bad input fails with a clear
//! message, a non-zero exit and no change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::{fails, json, tollgate};
use tollgate_store::{BudgetPeriod, Store, UsageRecord};

fn now_ms() -> i64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    i64::try_from(ms).unwrap()
}

#[test]
fn budgets_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    json(dir, &["projects", "create", "shop", "--json"]);
    let key = json(
        dir,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "prod",
            "--json",
        ],
    );
    let key_id = key["id"].as_str().unwrap().to_owned();

    let b = json(
        dir,
        &[
            "budgets",
            "set",
            "--project",
            "shop",
            "--env",
            "prod",
            "--daily",
            "5",
            "--monthly",
            "100.5",
            "--json",
        ],
    );
    assert_eq!(b["env"], "prod");
    assert_eq!(b["key_id"], Value::Null);
    assert_eq!(b["daily_usd_nanos"], 5_000_000_000u64);
    assert_eq!(b["monthly_usd_nanos"], 100_500_000_000u64);
    assert_eq!(b["soft_percent"], 80);
    let out = tollgate(
        dir,
        &[
            "budgets",
            "set",
            "--project",
            "shop",
            "--key",
            &key_id,
            "--daily",
            "0.25",
            "--soft-percent",
            "90",
        ],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("project shop, key {key_id}")) && text.contains("$0.250000 per day"),
        "{text}"
    );

    // Spend: two priced records of the key today, one of last month (not counted in
    // the month), one unpriced.
    let now = now_ms();
    let (month_start, _) = BudgetPeriod::Month.bounds(now);
    let rec = |id: &str, at: i64, cost: Option<u64>| UsageRecord {
        request_id: id.into(),
        key_id: Some(key_id.clone()),
        project: Some("shop".into()),
        env: Some("prod".into()),
        endpoint: "/v1/responses".into(),
        status: 200,
        input_tokens: 10,
        created_at_ms: at,
        cost_usd_nanos: cost,
        ..UsageRecord::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open_data_dir(dir).await.unwrap();
        store
            .insert_usage(&[
                rec("req_1", now, Some(100_000_000)),
                rec("req_2", now, Some(20_000_000)),
                rec("req_3", month_start - 1, Some(7_000_000_000)),
                rec("req_4", now, None),
            ])
            .await
            .unwrap();
    });

    let shown = json(dir, &["budgets", "show", "--project", "shop", "--json"]);
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len(), 2);
    let env = shown.iter().find(|b| b["env"] == "prod").unwrap();
    assert_eq!(env["day"]["spent_usd_nanos"], 120_000_000);
    assert_eq!(env["day"]["remaining_usd_nanos"], 4_880_000_000u64);
    assert_eq!(env["day"]["remaining_usd"], "4.880000");
    assert_eq!(env["month"]["spent_usd_nanos"], 120_000_000);
    assert_eq!(
        env["day"]["resets_at_ms"].as_i64(),
        Some(BudgetPeriod::Day.bounds(now).1)
    );
    let by_key = shown
        .iter()
        .find(|b| b["key_id"] == key_id.as_str())
        .unwrap();
    assert_eq!(by_key["day"]["spent_usd_nanos"], 120_000_000);
    assert_eq!(by_key["day"]["remaining_usd_nanos"], 130_000_000);
    assert_eq!(by_key["month"], Value::Null);
    assert_eq!(by_key["soft_percent"], 90);
    let table = tollgate(dir, &["budgets", "show"]);
    let text = String::from_utf8_lossy(&table.stdout);
    for part in [
        "PERIOD",
        "month",
        "$5.000000",
        "$0.120000",
        "$4.880000",
        "90 %",
    ] {
        assert!(text.contains(part), "{part:?} not in\n{text}");
    }

    fails(dir, &["budgets", "set", "--project", "shop"], "--daily");
    fails(
        dir,
        &["budgets", "set", "--project", "shop", "--daily", "five"],
        "not an amount of USD",
    );
    fails(
        dir,
        &["budgets", "set", "--project", "shop", "--daily", "0"],
        "positive amount",
    );
    fails(
        dir,
        &[
            "budgets",
            "set",
            "--project",
            "shop",
            "--daily",
            "1",
            "--soft-percent",
            "0",
        ],
        "1 to 100",
    );
    fails(
        dir,
        &[
            "budgets",
            "set",
            "--project",
            "shop",
            "--env",
            "prod",
            "--key",
            &key_id,
            "--daily",
            "1",
        ],
        "cannot be used with",
    );
    fails(
        dir,
        &["budgets", "set", "--project", "nope", "--daily", "1"],
        "nope",
    );
    fails(
        dir,
        &["budgets", "clear", "--project", "shop", "--env", "dev"],
        "no budget",
    );
    let cleared = json(
        dir,
        &[
            "budgets",
            "clear",
            "--project",
            "shop",
            "--env",
            "prod",
            "--json",
        ],
    );
    assert_eq!(cleared["cleared"], true);
    let left = json(dir, &["budgets", "show", "--json"]);
    assert_eq!(left.as_array().unwrap().len(), 1);

    let audit = tollgate(dir, &["audit", "--since", "1h"]);
    let text = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(text.matches("budgets.set").count(), 2, "{text}");
    assert_eq!(text.matches("budgets.clear").count(), 1, "{text}");
}
