//! Who may do what on a phonebook: register a callee name, see the list, call whom.
//!
//! A connection proves who it is once, with the optional `token` of its `hello`:
//!
//! * a **device token** (`[access.devices]`, callee name → token) lets a camera register
//!   the names that token is configured for, and nobody else can take those names;
//! * in `callers = "passphrase"` mode, the shared **passphrase** lets a page see the list,
//!   call, and go online under a name no device owns;
//! * in `callers = "users"` mode, a **user token** (`[access.users]`, user name → token)
//!   names the caller: the user may see the list, call the callees the rules allow, and go
//!   online under their own name; the callee is told the user name (`meta.user`), which the
//!   caller cannot forge;
//! * in `callers = "open"` mode (the default) anyone may do all of that, and the buttons
//!   at the device are the gate; a token that is none of the configured ones is still
//!   refused, as in every mode.
//!
//! Callee names are compared without regard to case, here as in the phonebook.
//!
//! Rules (`[[access.rules]]`) are read top to bottom; the first whose `callee` pattern
//! matches decides, by its `allow` list of user names (`"*"`: every user). With no rules
//! every user may call every callee.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who may call (and see the phonebook).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerMode {
    /// Anyone who reaches the phonebook; the device's buttons decide.
    #[default]
    Open,
    /// Whoever knows the shared passphrase.
    Passphrase,
    /// Named users, each with a token, limited by the rules.
    Users,
}

/// One rule: who may call the callees whose names match `callee`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A callee name, or a pattern ending in `*` (`"cam-*"`, `"*"`).
    pub callee: String,
    /// User names that may call them; `"*"` for every user.
    pub allow: Vec<String>,
}

impl Rule {
    /// Whether the rule is about `callee`; names differ in more than case, so patterns
    /// match without regard to it (`Front-Door` is `front-door`'s rule too).
    fn matches(&self, callee: &str) -> bool {
        match self.callee.strip_suffix('*') {
            Some(prefix) => callee
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix)),
            None => self.callee.eq_ignore_ascii_case(callee),
        }
    }
}

/// The phonebook's access settings (`[access]`).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSettings {
    /// Who may call: `open`, `passphrase` or `users`.
    pub callers: CallerMode,
    /// The shared passphrase for `callers = "passphrase"`.
    pub passphrase: Option<String>,
    /// User name → token, for `callers = "users"` (and WHEP players' bearer tokens).
    pub users: BTreeMap<String, String>,
    /// Callee name → device token: only that token may register that name.
    pub devices: BTreeMap<String, String>,
    /// Who may call whom, first match wins (users mode).
    pub rules: Vec<Rule>,
    /// Device name → the callee names that device may call (its bell rings them).
    pub rings: BTreeMap<String, Vec<String>>,
}

impl std::fmt::Debug for AccessSettings {
    // Tokens and the passphrase never reach a log, even at debug level.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessSettings")
            .field("callers", &self.callers)
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .field("rules", &self.rules)
            .field("rings", &self.rings)
            .finish()
    }
}

/// Shortest token or passphrase accepted, so a guessable one is refused at start.
pub const MIN_SECRET_LEN: usize = 8;

impl AccessSettings {
    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), String> {
        let secrets = self
            .passphrase
            .iter()
            .map(|p| ("the passphrase".to_owned(), p))
            .chain(self.users.iter().map(|(n, t)| (format!("user {n:?}"), t)))
            .chain(
                self.devices
                    .iter()
                    .map(|(n, t)| (format!("device {n:?}"), t)),
            );
        for (whose, secret) in secrets {
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "the token of {whose} is shorter than {MIN_SECRET_LEN} characters"
                ));
            }
        }
        match self.callers {
            CallerMode::Passphrase if self.passphrase.is_none() => {
                return Err("access.callers = \"passphrase\" needs access.passphrase".into());
            }
            CallerMode::Users if self.users.is_empty() => {
                return Err(
                    "access.callers = \"users\" needs at least one [access.users] entry".into(),
                );
            }
            _ => {}
        }
        // Where callers need credentials, only a device's token may place its bell's calls.
        for device in self.rings.keys() {
            if self.callers != CallerMode::Open
                && !self.devices.keys().any(|d| d.eq_ignore_ascii_case(device))
            {
                return Err(format!(
                    "access.rings names {device:?}, which is not in [access.devices]: only a device with its token may ring"
                ));
            }
        }
        for rule in &self.rules {
            for user in &rule.allow {
                if user != "*" && !self.users.contains_key(user) {
                    return Err(format!(
                        "the rule for {:?} allows {user:?}, who is not in [access.users]",
                        rule.callee
                    ));
                }
            }
        }
        Ok(())
    }

    /// Who `token` (from `hello`) makes a connection, or why it is refused.
    pub fn identify(&self, token: Option<&str>) -> Result<Identity, Refused> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(Identity::Anonymous);
        };
        let devices: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, t)| constant_time_eq(t, token))
            .map(|(name, _)| name.clone())
            .collect();
        if !devices.is_empty() {
            return Ok(Identity::Device(devices));
        }
        let user = self.users.iter().find(|(_, t)| constant_time_eq(t, token));
        let passphrase = self
            .passphrase
            .as_deref()
            .is_some_and(|p| constant_time_eq(p, token));
        match (self.callers, user) {
            (CallerMode::Users, Some((name, _))) => return Ok(Identity::User(name.clone())),
            (CallerMode::Passphrase, _) if passphrase => return Ok(Identity::Member),
            // Where everyone may call, a configured token adds nothing; but one nobody
            // configured is a mistake (or a guess) and is refused as everywhere else.
            (CallerMode::Open, _) if user.is_some() || passphrase => {
                return Ok(Identity::Anonymous);
            }
            _ => {}
        }
        Err(Refused::Unauthorized(
            "this token is not known to the phonebook".into(),
        ))
    }

    /// Whether `who` may see the callee list.
    pub fn may_listen(&self, who: &Identity) -> Result<(), Refused> {
        match (self.callers, who) {
            (CallerMode::Open, _) => Ok(()),
            (_, Identity::Anonymous) => Err(self.credentials_needed()),
            _ => Ok(()),
        }
    }

    /// Whether `who` may register `name`.
    pub fn may_register(&self, who: &Identity, name: &str) -> Result<(), Refused> {
        // Names are compared without regard to case, so `Front-Door` is the device's too.
        if self.devices.keys().any(|d| d.eq_ignore_ascii_case(name)) {
            return match who {
                Identity::Device(names) if names.iter().any(|n| n.eq_ignore_ascii_case(name)) => {
                    Ok(())
                }
                _ => Err(Refused::Unauthorized(format!(
                    "the name {name:?} belongs to a device: register it with that device's token"
                ))),
            };
        }
        match (self.callers, who) {
            (CallerMode::Open, _) | (_, Identity::Member) => Ok(()),
            (_, Identity::User(user)) if user.eq_ignore_ascii_case(name) => Ok(()),
            (_, Identity::User(user)) => Err(Refused::Forbidden(format!(
                "{user} may go online as {user:?} only"
            ))),
            (_, Identity::Anonymous) => Err(self.credentials_needed()),
            (_, Identity::Device(_)) => Err(Refused::Forbidden(format!(
                "this device token is not configured for {name:?}"
            ))),
        }
    }

    /// Whether `who` may call `callee`.
    pub fn may_call(&self, who: &Identity, callee: &str) -> Result<(), Refused> {
        match (self.callers, who) {
            (CallerMode::Open, _) => Ok(()),
            (CallerMode::Passphrase, Identity::Member) => Ok(()),
            (CallerMode::Users, Identity::User(user)) => {
                let allowed = match self.rules.iter().find(|r| r.matches(callee)) {
                    Some(rule) => rule.allow.iter().any(|a| a == "*" || a == user),
                    None => self.rules.is_empty(),
                };
                if allowed {
                    Ok(())
                } else {
                    Err(Refused::Forbidden(format!("{user} may not call {callee}")))
                }
            }
            (_, Identity::Device(names)) => {
                let rings = names.iter().any(|name| {
                    self.rings.iter().any(|(device, callees)| {
                        device.eq_ignore_ascii_case(name)
                            && callees.iter().any(|c| c.eq_ignore_ascii_case(callee))
                    })
                });
                if rings {
                    Ok(())
                } else {
                    Err(Refused::Forbidden(format!(
                        "this device may not call {callee} (access.rings lists whom a device rings)"
                    )))
                }
            }
            (_, Identity::Anonymous) => Err(self.credentials_needed()),
            _ => Err(Refused::Forbidden(
                "this identity may not place calls".into(),
            )),
        }
    }

    /// How many names the device `name` may ring at once (its `rings` list).
    pub fn rings_of(&self, name: &str) -> usize {
        self.rings
            .iter()
            .filter(|(device, _)| device.eq_ignore_ascii_case(name))
            .map(|(_, callees)| callees.len())
            .sum()
    }

    fn credentials_needed(&self) -> Refused {
        Refused::Unauthorized(match self.callers {
            CallerMode::Passphrase => "this phonebook needs its passphrase (hello.token)".into(),
            _ => "this phonebook needs a user token (hello.token)".into(),
        })
    }
}

/// Who a connection is, after its `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No (or, in open mode, an unknown) token.
    Anonymous,
    /// Knows the shared passphrase.
    Member,
    /// A named user.
    User(String),
    /// A device, owner of these callee names.
    Device(Vec<String>),
}

impl Identity {
    /// The verified user name, given to the callee as `meta.user`.
    pub fn user(&self) -> Option<&str> {
        match self {
            Identity::User(name) => Some(name),
            _ => None,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No credentials, or unknown ones.
    Unauthorized(String),
    /// Known, but not allowed to do this.
    Forbidden(String),
}

/// Compares two secrets in time that depends on their lengths only.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> AccessSettings {
        toml::from_str(
            r#"
            callers = "users"
            users = { ray = "ray-token-1", ada = "ada-token-1", eve = "eve-token-1" }
            devices = { front-door = "door-token-1", garage = "garage-token" }
            [[rules]]
            callee = "front-door"
            allow = ["ray", "ada"]
            [[rules]]
            callee = "garage*"
            allow = ["ray"]
            [[rules]]
            callee = "*"
            allow = ["*"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn device_tokens_own_their_names() {
        let access = users();
        access.validate().unwrap();
        let door = access.identify(Some("door-token-1")).unwrap();
        assert_eq!(door, Identity::Device(vec!["front-door".into()]));
        assert!(access.may_register(&door, "front-door").is_ok());
        assert!(access.may_register(&door, "garage").is_err());
        let ray = access.identify(Some("ray-token-1")).unwrap();
        assert!(matches!(
            access.may_register(&ray, "front-door"),
            Err(Refused::Unauthorized(why)) if why.contains("belongs to a device")
        ));
        // Even in open mode a device's name needs its token.
        let open = AccessSettings {
            devices: access.devices.clone(),
            ..Default::default()
        };
        assert!(
            open.may_register(&Identity::Anonymous, "front-door")
                .is_err()
        );
        assert!(open.may_register(&Identity::Anonymous, "alice").is_ok());
    }

    #[test]
    fn rules_decide_who_calls_whom() {
        let access = users();
        let id = |t| access.identify(Some(t)).unwrap();
        assert!(access.may_call(&id("ray-token-1"), "front-door").is_ok());
        assert!(access.may_call(&id("ada-token-1"), "front-door").is_ok());
        assert!(matches!(
            access.may_call(&id("eve-token-1"), "front-door"),
            Err(Refused::Forbidden(_))
        ));
        assert!(access.may_call(&id("ray-token-1"), "garage-2").is_ok());
        assert!(access.may_call(&id("ada-token-1"), "garage-2").is_err());
        assert!(access.may_call(&id("eve-token-1"), "kitchen").is_ok());
        assert!(matches!(
            access.may_call(&Identity::Anonymous, "kitchen"),
            Err(Refused::Unauthorized(_))
        ));
        assert!(matches!(
            access.identify(Some("guess")),
            Err(Refused::Unauthorized(_))
        ));
        assert!(access.may_listen(&Identity::Anonymous).is_err());
        assert!(access.may_listen(&id("eve-token-1")).is_ok());
        assert_eq!(id("eve-token-1").user(), Some("eve"));
    }

    #[test]
    fn a_device_rings_only_whom_access_rings_lists() {
        let mut access = users();
        let door = access.identify(Some("door-token-1")).unwrap();
        assert!(matches!(
            access.may_call(&door, "ada"),
            Err(Refused::Forbidden(why)) if why.contains("access.rings")
        ));
        access
            .rings
            .insert("Front-Door".into(), vec!["ray".into(), "ADA".into()]);
        access.validate().unwrap();
        assert!(access.may_call(&door, "ada").is_ok());
        assert!(access.may_call(&door, "Ray").is_ok());
        assert!(access.may_call(&door, "eve").is_err());
        let garage = access.identify(Some("garage-token")).unwrap();
        assert!(access.may_call(&garage, "ray").is_err());
        access.rings.insert("porch".into(), vec!["ray".into()]);
        assert!(access.validate().unwrap_err().contains("porch"));
    }

    #[test]
    fn users_go_online_under_their_own_name_only() {
        let access = users();
        let ada = access.identify(Some("ada-token-1")).unwrap();
        assert!(access.may_register(&ada, "ada").is_ok());
        assert!(access.may_register(&ada, "ray").is_err());
    }

    #[test]
    fn passphrase_mode() {
        let access = AccessSettings {
            callers: CallerMode::Passphrase,
            passphrase: Some("open sesame".into()),
            ..Default::default()
        };
        access.validate().unwrap();
        let member = access.identify(Some("open sesame")).unwrap();
        assert!(access.may_call(&member, "front-door").is_ok());
        assert!(access.may_register(&member, "alice").is_ok());
        assert!(access.identify(Some("open sesamE")).is_err());
        assert!(access.may_call(&Identity::Anonymous, "x").is_err());
    }

    #[test]
    fn open_mode_lets_anyone_in_but_not_with_a_made_up_token() {
        let access = AccessSettings::default();
        let who = access.identify(None).unwrap();
        assert_eq!(who, Identity::Anonymous);
        assert!(access.may_call(&who, "front-door").is_ok());
        assert!(access.may_listen(&who).is_ok());
        assert!(matches!(
            access.identify(Some("whatever")),
            Err(Refused::Unauthorized(_))
        ));
        // A configured user's token is known, and grants no more than none.
        let with_users = AccessSettings {
            users: [("ray".to_owned(), "ray-token-1".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(
            with_users.identify(Some("ray-token-1")),
            Ok(Identity::Anonymous)
        );
    }

    #[test]
    fn names_and_rules_ignore_case() {
        let access = users();
        let door = access.identify(Some("door-token-1")).unwrap();
        assert!(access.may_register(&door, "Front-Door").is_ok());
        let eve = access.identify(Some("eve-token-1")).unwrap();
        // Another spelling of a device's name is still the device's.
        assert!(access.may_register(&eve, "FRONT-DOOR").is_err());
        assert!(access.may_register(&eve, "Eve").is_ok());
        // And its rule still decides who calls it.
        assert!(access.may_call(&eve, "Front-door").is_err());
        let ada = access.identify(Some("ada-token-1")).unwrap();
        assert!(access.may_call(&ada, "GARAGE-2").is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        let short = AccessSettings {
            callers: CallerMode::Passphrase,
            passphrase: Some("short".into()),
            ..Default::default()
        };
        assert!(short.validate().unwrap_err().contains("shorter than"));
        let missing = AccessSettings {
            callers: CallerMode::Users,
            ..Default::default()
        };
        assert!(missing.validate().is_err());
        let mut unknown = users();
        unknown.rules[0].allow.push("mallory".into());
        assert!(unknown.validate().unwrap_err().contains("mallory"));
    }
}
