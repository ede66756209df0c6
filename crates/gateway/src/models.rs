//! Model routing, applied in stage 3 (preflight): aliases and access lists.
//!
//! Aliases: a request whose `model` is an alias is sent to the alias's model — only
//! the body's `model` value is rewritten, every other byte stays. A project's own
//! aliases (the store: `tollgate models alias set`) come first, then the gateway's:
//! the built-in `fast` → gpt-4o-mini, `smart` → gpt-4.1, `reasoning` → o3-mini and
//! `default` → gpt-4o-mini, with the config's `[aliases]` over them (`OPENAI_MODEL`
//! sets `default` when `tollgate serve` starts). Aliases do not chain: the target is a model id.
//!
//! Access lists, per project and environment (the store: `tollgate models allow|deny`):
//! with an allow-list, only the models on it may be used; a deny-list forbids the
//! models on it. An environment's own allow-list replaces its project's (`--env`
//! omitted: every environment's); deny-lists add up. An entry is a model id (its dated
//! snapshots included: `gpt-4o` covers `gpt-4o-2024-08-06`) or a prefix ending in `*`.
//! The check is on the model that will serve (after alias resolution). Without lists
//! every model is allowed.
//!
//! The rules change with the store's `limits_version` (the rate limits' counter) and
//! are reloaded with the rate limits, without a restart. A request pays a hash lookup
//! of its project and one of its model (aliases), nothing more when no rule applies.

use std::collections::{BTreeMap, HashMap};

use tollgate_store::{AccessKind, ModelAccess, ModelAlias};

use crate::error::GatewayError;

/// The built-in aliases, before `[aliases]` (and `default` before `OPENAI_MODEL`).
pub const BUILTIN_ALIASES: [(&str, &str); 4] = [
    ("default", "gpt-4o-mini"),
    ("fast", "gpt-4o-mini"),
    ("smart", "gpt-4.1"),
    ("reasoning", "o3-mini"),
];

/// Every alias and access list, by project.
#[derive(Debug, Clone, Default)]
pub struct ModelRules {
    /// Gateway-wide aliases (built-in with the config's over them).
    global: HashMap<String, String>,
    projects: HashMap<String, ProjectRules>,
}

#[derive(Debug, Clone, Default)]
struct ProjectRules {
    aliases: HashMap<String, String>,
    /// Lists for every environment.
    all_envs: Lists,
    envs: HashMap<String, Lists>,
}

#[derive(Debug, Clone, Default)]
struct Lists {
    allow: Option<Vec<String>>,
    deny: Vec<String>,
}

/// What one caller (project, environment) may use: an owned copy of its lists, for
/// the error message and for filtering `GET /v1/models`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFilter {
    /// `None`: any model not denied.
    pub allow: Option<Vec<String>>,
    pub deny: Vec<String>,
}

/// Nothing inside is shared: a clone is a copy of the thread's own.
impl crate::snapshot::ThreadCopy for ModelRules {
    fn thread_copy(&self) -> Self {
        self.clone()
    }
}

impl ModelRules {
    /// Rules with only gateway-wide aliases (`global`: alias → model).
    pub fn with_aliases(global: &BTreeMap<String, String>) -> Self {
        Self {
            global: global.iter().map(|(a, m)| (a.clone(), m.clone())).collect(),
            projects: HashMap::new(),
        }
    }

    /// These gateway-wide aliases with the store's project aliases and lists.
    pub fn with_store_rules(&self, aliases: Vec<ModelAlias>, access: Vec<ModelAccess>) -> Self {
        let mut projects: HashMap<String, ProjectRules> = HashMap::new();
        for a in aliases {
            projects
                .entry(a.project)
                .or_default()
                .aliases
                .insert(a.alias, a.model);
        }
        for l in access {
            let p = projects.entry(l.project).or_default();
            let lists = match l.env {
                Some(env) => p.envs.entry(env).or_default(),
                None => &mut p.all_envs,
            };
            match l.kind {
                AccessKind::Allow => lists.allow = Some(l.models),
                AccessKind::Deny => lists.deny = l.models,
            }
        }
        Self {
            global: self.global.clone(),
            projects,
        }
    }

    /// The model an alias stands for in `project`; `None` when `model` is no alias.
    pub fn resolve(&self, project: &str, model: &str) -> Option<&str> {
        self.projects
            .get(project)
            .and_then(|p| p.aliases.get(model))
            .or_else(|| self.global.get(model))
            .map(String::as_str)
    }

    /// Every alias `project` sees, sorted: its own over the gateway's.
    pub fn aliases_of(&self, project: &str) -> Vec<(String, String)> {
        let mut all = self.global.clone();
        if let Some(p) = self.projects.get(project) {
            all.extend(p.aliases.iter().map(|(a, m)| (a.clone(), m.clone())));
        }
        let mut v: Vec<_> = all.into_iter().collect();
        v.sort();
        v
    }

    /// Whether `model` may be used in `project`/`env`.
    pub fn permits(&self, project: &str, env: &str, model: &str) -> bool {
        let Some(p) = self.projects.get(project) else {
            return true;
        };
        let own = p.envs.get(env);
        let allow = own
            .and_then(|l| l.allow.as_deref())
            .or(p.all_envs.allow.as_deref());
        if allow.is_some_and(|list| !matches_any(list, model)) {
            return false;
        }
        !matches_any(&p.all_envs.deny, model) && !own.is_some_and(|l| matches_any(&l.deny, model))
    }

    /// The lists governing `project`/`env`; `None` when none does.
    pub fn filter(&self, project: &str, env: &str) -> Option<ModelFilter> {
        let p = self.projects.get(project)?;
        let own = p.envs.get(env);
        let allow = own
            .and_then(|l| l.allow.clone())
            .or_else(|| p.all_envs.allow.clone());
        let mut deny = p.all_envs.deny.clone();
        if let Some(l) = own {
            deny.extend(l.deny.iter().cloned());
        }
        deny.sort();
        deny.dedup();
        (allow.is_some() || !deny.is_empty()).then_some(ModelFilter { allow, deny })
    }

    /// Resolves `model` for the caller and checks it may be used: the model to send
    /// when it was an alias (`None`: send it as it is), or 404 `model_not_found`.
    pub fn route(
        &self,
        project: &str,
        env: &str,
        model: &str,
    ) -> Result<Option<&str>, GatewayError> {
        let resolved = self.resolve(project, model);
        let target = resolved.unwrap_or(model);
        if self.permits(project, env, target) {
            return Ok(resolved);
        }
        Err(GatewayError::ModelNotFound {
            model: model.to_owned(),
            served: resolved.map(str::to_owned),
            filter: Box::new(self.filter(project, env).unwrap_or_default()),
        })
    }
}

impl ModelFilter {
    /// Whether the lists let `model` through.
    pub fn permits(&self, model: &str) -> bool {
        self.allow.as_deref().is_none_or(|a| matches_any(a, model))
            && !matches_any(&self.deny, model)
    }

    /// The models the caller may use, as a sentence for an error message.
    pub fn describe(&self) -> String {
        match &self.allow {
            Some(allow) => {
                let mut usable: Vec<&str> = allow
                    .iter()
                    .map(String::as_str)
                    .filter(|m| !matches_any(&self.deny, m))
                    .collect();
                usable.sort_unstable();
                if usable.is_empty() {
                    "This key may use no model (its allow-list is empty after the deny-list)."
                        .into()
                } else {
                    format!("This key may use: {}.", usable.join(", "))
                }
            }
            None => format!(
                "This key may use any model except: {}.",
                self.deny.join(", ")
            ),
        }
    }

    /// Keeps only the permitted entries of a `GET /v1/models` list body
    /// (`{"object":"list","data":[{"id":…},…]}`); `None` when the body is no such list.
    pub fn filter_list(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let data = v.get_mut("data")?.as_array_mut()?;
        data.retain(|m| {
            m.get("id")
                .and_then(|id| id.as_str())
                .is_some_and(|id| self.permits(id))
        });
        serde_json::to_vec(&v).ok()
    }
}

/// Whether an entry of a list covers `model` (see the module docs).
fn matches_any(list: &[String], model: &str) -> bool {
    list.iter().any(|entry| entry_matches(entry, model))
}

fn entry_matches(entry: &str, model: &str) -> bool {
    if let Some(prefix) = entry.strip_suffix('*') {
        return model.starts_with(prefix);
    }
    if entry == model {
        return true;
    }
    // A dated snapshot of the entry: `gpt-4o-2024-08-06` for `gpt-4o`.
    model
        .strip_prefix(entry)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(is_date)
}

/// `YYYY-MM-DD`.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// The gateway-wide aliases: the built-in ones with `configured` (the config's
/// `[aliases]`, where the CLI puts `OPENAI_MODEL` as `default`) over them.
pub fn global_aliases(configured: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut all: BTreeMap<String, String> = BUILTIN_ALIASES
        .iter()
        .map(|(a, m)| ((*a).to_owned(), (*m).to_owned()))
        .collect();
    all.extend(configured.iter().map(|(a, m)| (a.clone(), m.clone())));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(project: &str, alias: &str, model: &str) -> ModelAlias {
        ModelAlias {
            project: project.into(),
            alias: alias.into(),
            model: model.into(),
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn list(env: Option<&str>, kind: AccessKind, models: &[&str]) -> ModelAccess {
        ModelAccess {
            project: "shop".into(),
            env: env.map(Into::into),
            kind,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn rules(aliases: Vec<ModelAlias>, access: Vec<ModelAccess>) -> ModelRules {
        let configured = BTreeMap::from([
            ("cheap".to_owned(), "gpt-4.1-nano".to_owned()),
            ("default".to_owned(), "gpt-4o".to_owned()),
        ]);
        ModelRules::with_aliases(&global_aliases(&configured)).with_store_rules(aliases, access)
    }

    #[test]
    fn aliases_resolve_project_first_then_config_then_builtin() {
        let r = rules(vec![alias("shop", "smart", "gpt-4o")], vec![]);
        assert_eq!(r.resolve("shop", "smart"), Some("gpt-4o"));
        assert_eq!(r.resolve("blog", "smart"), Some("gpt-4.1"));
        assert_eq!(r.resolve("blog", "fast"), Some("gpt-4o-mini"));
        assert_eq!(r.resolve("blog", "reasoning"), Some("o3-mini"));
        // The config (or OPENAI_MODEL) sets `default` and adds its own.
        assert_eq!(r.resolve("blog", "default"), Some("gpt-4o"));
        assert_eq!(r.resolve("blog", "cheap"), Some("gpt-4.1-nano"));
        assert_eq!(r.resolve("blog", "gpt-4o"), None);
        let plain = ModelRules::with_aliases(&global_aliases(&BTreeMap::new()));
        assert_eq!(plain.resolve("x", "default"), Some("gpt-4o-mini"));
        let seen = r.aliases_of("shop");
        assert!(
            seen.contains(&("smart".into(), "gpt-4o".into())),
            "{seen:?}"
        );
    }

    #[test]
    fn an_env_allow_list_replaces_the_projects_and_deny_lists_add_up() {
        let r = rules(
            vec![],
            vec![
                list(None, AccessKind::Allow, &["gpt-4o-mini", "gpt-4o"]),
                list(Some("dev"), AccessKind::Allow, &["gpt-4.1*"]),
                list(None, AccessKind::Deny, &["gpt-4o"]),
                list(Some("prod"), AccessKind::Deny, &["gpt-4o-mini-2024-07-18"]),
            ],
        );
        assert!(r.permits("shop", "prod", "gpt-4o-mini"));
        assert!(!r.permits("shop", "prod", "gpt-4o"), "denied for all envs");
        assert!(!r.permits("shop", "prod", "gpt-4o-mini-2024-07-18"));
        assert!(
            r.permits("shop", "staging", "gpt-4o-mini-2024-07-18"),
            "a snapshot of an entry"
        );
        assert!(!r.permits("shop", "prod", "gpt-4.1"));
        assert!(r.permits("shop", "dev", "gpt-4.1-mini"), "prefix entry");
        assert!(
            !r.permits("shop", "dev", "gpt-4o-mini"),
            "dev's own list replaces"
        );
        assert!(
            r.permits("blog", "prod", "anything"),
            "no lists: all allowed"
        );
        assert!(!entry_matches("gpt-4o", "gpt-4o-mini"));
        assert!(!entry_matches("gpt-4o", "gpt-4o-2024-8-6"));
    }

    #[test]
    fn a_refusal_lists_what_the_key_may_use() {
        let r = rules(
            vec![alias("shop", "best", "o3")],
            vec![
                list(None, AccessKind::Allow, &["gpt-4o-mini", "gpt-4o", "o3"]),
                list(Some("prod"), AccessKind::Deny, &["o3"]),
            ],
        );
        assert_eq!(
            r.route("shop", "prod", "fast").unwrap(),
            Some("gpt-4o-mini")
        );
        assert_eq!(r.route("shop", "prod", "gpt-4o").unwrap(), None);
        let e = r.route("shop", "prod", "best").unwrap_err();
        assert_eq!(e.status(), http::StatusCode::NOT_FOUND);
        assert_eq!(e.code(), Some("model_not_found"));
        assert_eq!(e.param(), Some("model"));
        let m = e.message();
        assert!(m.contains("`best`") && m.contains("o3"), "{m}");
        assert!(m.contains("may use: gpt-4o, gpt-4o-mini."), "{m}");
        let only_deny = rules(vec![], vec![list(None, AccessKind::Deny, &["o3*"])]);
        let m = only_deny
            .route("shop", "dev", "o3-mini")
            .unwrap_err()
            .message();
        assert!(m.contains("any model except: o3*"), "{m}");
    }

    #[test]
    fn model_lists_are_filtered_to_the_permitted_ids() {
        let f = ModelFilter {
            allow: Some(vec!["gpt-4o*".into()]),
            deny: vec!["gpt-4o-mini".into()],
        };
        let body = br#"{"object":"list","data":[{"id":"gpt-4o","object":"model"},{"id":"gpt-4o-mini"},{"id":"o3"}]}"#;
        let out: serde_json::Value = serde_json::from_slice(&f.filter_list(body).unwrap()).unwrap();
        let ids: Vec<&str> = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["gpt-4o"]);
        assert_eq!(out["object"], "list");
        assert!(f.filter_list(b"not json").is_none());
    }
}
