//! `tollgate models` and `tollgate models cost` as a user runs them: the built binary,
//! with and without a config file whose `[[models]]` entries replace or add models;
//! and the cost totals `tollgate usage` shows from priced (and unpriced) records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn tollgate(config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("RUST_BACKTRACE");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.output().unwrap()
}

fn ok(config: Option<&Path>, args: &[&str]) -> String {
    let out = tollgate(config, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_cheat_sheet_lists_every_model_with_prices_per_1m() {
    let table = ok(None, &["models"]);
    let mini = table
        .lines()
        .find(|l| l.starts_with("gpt-4o-mini "))
        .expect("gpt-4o-mini row");
    for cell in [
        "128000",
        "16384",
        "fast",
        "$0.15",
        "$0.075",
        "$0.60",
        "2025-06-10",
    ] {
        assert!(mini.contains(cell), "{cell} missing from {mini:?}");
    }
    assert!(table.contains("INPUT/1M") && table.contains("per 1M tokens (not per 1K)"));

    let v: Value = serde_json::from_str(&ok(None, &["models", "--json"])).unwrap();
    assert_eq!(v["price_unit"], "USD per 1M tokens");
    let models = v["models"].as_array().unwrap();
    let ids: Vec<&str> = models.iter().map(|m| m["id"].as_str().unwrap()).collect();
    for id in [
        "gpt-4.1",
        "o3",
        "o4-mini",
        "text-embedding-3-large",
        "omni-moderation-latest",
    ] {
        assert!(ids.contains(&id), "{id} not in {ids:?}");
    }
    let o3 = models.iter().find(|m| m["id"] == "o3").unwrap();
    assert_eq!(o3["output_per_1m"], "8.00");
    assert_eq!(o3["family"], "o200k_base");
    assert!(o3["capabilities"]
        .as_array()
        .unwrap()
        .contains(&"reasoning".into()));
    let emb = models
        .iter()
        .find(|m| m["id"] == "text-embedding-3-small")
        .unwrap();
    assert_eq!(emb["output_per_1m"], Value::Null);
    assert_eq!(emb["family"], "cl100k_base");
}

#[test]
fn cost_estimates_are_exact_and_unknown_models_list_the_known_ones() {
    let text = ok(
        None,
        &[
            "models",
            "cost",
            "--model",
            "gpt-4o-mini",
            "--input",
            "1200",
            "--output",
            "400",
        ],
    );
    // 1200 × $0.15/1M + 400 × $0.60/1M = $0.00018 + $0.00024.
    assert!(text.contains("= $0.000420"), "{text}");

    let v: Value = serde_json::from_str(&ok(
        None,
        &[
            "models",
            "cost",
            "--model",
            "gpt-4o-2024-08-06",
            "--input",
            "1200",
            "--cached",
            "1000",
            "--output",
            "400",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(v["catalog_id"], "gpt-4o");
    // 200 × 2500 + 1000 × 1250 + 400 × 10000 nano-USD.
    assert_eq!(v["cost_usd_nanos"], 200 * 2500 + 1000 * 1250 + 400 * 10_000);
    assert_eq!(v["cost_usd"], "0.005750");

    let out = tollgate(
        None,
        &["models", "cost", "--model", "gpt-5-turbo", "--input", "1"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown model \"gpt-5-turbo\""), "{err}");
    assert!(
        err.contains("gpt-4.1-mini") && err.contains("o3-mini"),
        "{err}"
    );

    let out = tollgate(
        None,
        &[
            "models", "cost", "--model", "o3", "--input", "10", "--cached", "11",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot exceed --input"));
}

#[test]
fn config_models_replace_and_add_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tollgate.toml");
    std::fs::write(
        &path,
        "[[models]]\nid = \"llama3.1:8b\"\ninput_per_1m = 0.05\noutput_per_1m = 0.1\n\
         context_window = 131072\nbest_use = \"local vLLM\"\n\
         [[models]]\nid = \"gpt-4o-mini\"\ninput_per_1m = 1\noutput_per_1m = 2\n",
    )
    .unwrap();
    let v: Value = serde_json::from_str(&ok(
        Some(&path),
        &[
            "models",
            "cost",
            "--model",
            "llama3.1:8b",
            "--input",
            "1000",
            "--output",
            "1000",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(v["cost_usd_nanos"], 1000 * 50 + 1000 * 100);
    let v: Value = serde_json::from_str(&ok(
        Some(&path),
        &[
            "models",
            "cost",
            "--model",
            "gpt-4o-mini",
            "--input",
            "1000000",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(v["cost_usd"], "1.000000");
    assert_eq!(v["prices_checked"], Value::Null);

    std::fs::write(&path, "[[models]]\nid = \"x\"\ninput_per_1m = -1\n").unwrap();
    let out = tollgate(Some(&path), &["models"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("models[0].input_per_1m"), "{err}");
}

#[test]
fn usage_shows_cost_totals_and_counts_unpriced_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let now = i64::try_from(now).unwrap();
    let rec = |id: &str, model: &str, cost: Option<u64>| tollgate_store::UsageRecord {
        request_id: id.into(),
        endpoint: "/v1/responses".into(),
        model_requested: Some(model.into()),
        status: 200,
        input_tokens: 10,
        output_tokens: 5,
        total_tokens: 15,
        created_at_ms: now,
        cost_usd_nanos: cost,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = tollgate_store::Store::open_data_dir(dir).await.unwrap();
        store
            .insert_usage(&[
                rec("req_1", "gpt-4o", Some(405_000)),
                rec("req_2", "gpt-4o", Some(1_000_000_075)),
                rec("req_3", "llama3", None),
            ])
            .await
            .unwrap();
    });
    let usage = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .env("TOLLGATE_DATA_DIR", dir)
            .env_remove("TOLLGATE_DATABASE_URL")
            .env_remove("TOLLGATE_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let v: Value = serde_json::from_str(&usage(&["usage", "--by", "model", "--json"])).unwrap();
    assert_eq!(v[0]["group"], "gpt-4o");
    assert_eq!(v[0]["cost_usd_nanos"], 1_000_405_075_u64);
    assert_eq!(v[0]["cost_usd"], "1.000405075");
    assert_eq!(v[0]["unpriced"], 0);
    assert_eq!(v[1]["group"], "llama3");
    assert_eq!(v[1]["cost_usd"], Value::Null, "unknown, not $0");
    assert_eq!(v[1]["unpriced"], 1);

    let table = usage(&["usage", "--by", "model"]);
    assert!(
        table.contains("COST (USD)") && table.contains("UNPRICED"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("gpt-4o ")).unwrap();
    assert!(row.contains("$1.000405075"), "{row}");
    assert!(
        table.contains("records of models not in the catalog"),
        "{table}"
    );
}

#[test]
fn aliases_and_access_lists_are_set_listed_and_cleared_on_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .env("TOLLGATE_DATA_DIR", dir)
            .env_remove("TOLLGATE_DATABASE_URL")
            .env_remove("TOLLGATE_CONFIG")
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let fails = |args: &[&str]| {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    };
    ok(&["projects", "create", "shop"]);

    let v: Value = serde_json::from_str(&ok(&[
        "models",
        "alias",
        "set",
        "--project",
        "shop",
        "smart",
        "gpt-4o",
        "--json",
    ]))
    .unwrap();
    assert_eq!(
        (v["alias"].as_str(), v["model"].as_str()),
        (Some("smart"), Some("gpt-4o"))
    );
    let v: Value = serde_json::from_str(&ok(&[
        "models",
        "alias",
        "list",
        "--project",
        "shop",
        "--json",
    ]))
    .unwrap();
    let aliases = v["aliases"].as_array().unwrap();
    let find = |a: &str| aliases.iter().find(|x| x["alias"] == a).unwrap().clone();
    assert_eq!(find("smart")["model"], "gpt-4o");
    assert_eq!(find("smart")["from"], "shop");
    assert_eq!(find("fast")["from"], "gateway");
    assert_eq!(aliases.iter().filter(|x| x["alias"] == "smart").count(), 1);
    // An alias may not hide a catalog model, nor point at another alias.
    assert!(fails(&[
        "models",
        "alias",
        "set",
        "--project",
        "shop",
        "gpt-4o",
        "gpt-4.1"
    ])
    .contains("catalog"));
    assert!(fails(&["models", "alias", "set", "--project", "shop", "x", "fast"]).contains("chain"));
    ok(&["models", "alias", "unset", "--project", "shop", "smart"]);
    assert!(
        fails(&["models", "alias", "unset", "--project", "shop", "smart"]).contains("no alias")
    );

    let out = run(&[
        "models",
        "allow",
        "--project",
        "shop",
        "--env",
        "prod",
        "gpt-4o-mini",
        "gpt-4.1*",
        "gpt-4o-mimi",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("\"gpt-4o-mimi\" is not in the model catalog"));
    ok(&["models", "deny", "--project", "shop", "o3"]);
    let v: Value = serde_json::from_str(&ok(&[
        "models",
        "access",
        "show",
        "--project",
        "shop",
        "--json",
    ]))
    .unwrap();
    let lists = v.as_array().unwrap();
    assert_eq!(lists.len(), 2);
    assert_eq!(lists[0]["kind"], "deny");
    assert_eq!(lists[0]["env"], Value::Null);
    assert_eq!(
        lists[1]["models"],
        serde_json::json!(["gpt-4.1*", "gpt-4o-mimi", "gpt-4o-mini"])
    );
    let table = ok(&["models", "access", "show"]);
    assert!(
        table.contains("PROJECT") && table.contains("gpt-4o-mini"),
        "{table}"
    );
    ok(&[
        "models",
        "allow",
        "--project",
        "shop",
        "--env",
        "prod",
        "--clear",
    ]);
    let v: Value = serde_json::from_str(&ok(&["models", "access", "show", "--json"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    // Every change is audited.
    let audit = ok(&["audit", "--since", "1h", "--json"]);
    for action in [
        "models.alias.set",
        "models.alias.unset",
        "models.allow",
        "models.deny",
    ] {
        assert!(audit.contains(action), "{action} not in the audit log");
    }
}

#[test]
fn catalog_entries_are_set_on_the_store_listed_priced_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .env("TOLLGATE_DATA_DIR", dir)
            .env_remove("TOLLGATE_DATABASE_URL")
            .env_remove("TOLLGATE_CONFIG")
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let fails = |args: &[&str], needle: &str| {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    };

    let v: Value = serde_json::from_str(&ok(&[
        "models",
        "set",
        "llama3.1:8b",
        "--context-window",
        "8192",
        "--max-output",
        "2048",
        "--input-price",
        "0.05",
        "--output-price",
        "0.1",
        "--family",
        "cl100k_base",
        "--latency-class",
        "fast",
        "--capabilities",
        "text,tools",
        "--checked",
        "2026-11-01",
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["input_per_1m"], "0.05");
    assert_eq!(v["output_per_1m"], "0.10");
    assert_eq!(v["capabilities"], serde_json::json!(["text", "tools"]));
    assert_eq!(v["from"], "store");
    // A stored entry replaces the built-in one of the same id, whole.
    ok(&[
        "models",
        "set",
        "gpt-4o-mini",
        "--context-window",
        "64000",
        "--input-price",
        "1",
        "--output-price",
        "2",
    ]);

    let v: Value = serde_json::from_str(&ok(&["models", "--json"])).unwrap();
    let models = v["models"].as_array().unwrap();
    let find = |id: &str| models.iter().find(|m| m["id"] == id).cloned().unwrap();
    assert_eq!(find("llama3.1:8b")["context_window"], 8192);
    assert_eq!(find("gpt-4o-mini")["context_window"], 64000);
    assert_eq!(find("gpt-4o-mini")["cached_input_per_1m"], Value::Null);
    assert_eq!(find("gpt-4o")["input_per_1m"], "2.50", "the others stay");
    let table = ok(&["models"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("llama3.1:8b "))
        .unwrap();
    assert!(row.contains("$0.05") && row.contains("2026-11-01"), "{row}");
    let v: Value = serde_json::from_str(&ok(&[
        "models",
        "cost",
        "--model",
        "gpt-4o-mini",
        "--input",
        "1000000",
        "--output",
        "1000000",
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["cost_usd"], "3.000000");

    // Bad entries are refused with the field, and nothing is stored.
    fails(
        &[
            "models",
            "set",
            "x",
            "--context-window",
            "100",
            "--max-output",
            "200",
            "--input-price",
            "1",
        ],
        "max_output_tokens: must not exceed context_window (100)",
    );
    fails(
        &[
            "models",
            "set",
            "x",
            "--context-window",
            "100",
            "--input-price",
            "0.0001",
        ],
        "input_per_1m",
    );
    fails(
        &[
            "models",
            "set",
            "x",
            "--context-window",
            "100",
            "--input-price",
            "1",
            "--capabilities",
            "telepathy",
        ],
        "--capabilities",
    );

    let v: Value =
        serde_json::from_str(&ok(&["models", "remove", "gpt-4o-mini", "--json"])).unwrap();
    assert_eq!(v["removed"], true);
    assert_eq!(v["fallback"], true);
    ok(&["models", "remove", "llama3.1:8b"]);
    fails(&["models", "remove", "llama3.1:8b"], "no catalog entry");
    let v: Value = serde_json::from_str(&ok(&["models", "--json"])).unwrap();
    let models = v["models"].as_array().unwrap();
    assert!(models.iter().all(|m| m["id"] != "llama3.1:8b"));
    let mini = models.iter().find(|m| m["id"] == "gpt-4o-mini").unwrap();
    assert_eq!(mini["context_window"], 128000, "the built-in entry is back");

    let audit = ok(&["audit", "--since", "1h", "--json"]);
    for action in ["models.catalog.set", "models.catalog.remove"] {
        assert!(audit.contains(action), "{action} not in the audit log");
    }
}
