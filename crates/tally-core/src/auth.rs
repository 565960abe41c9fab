//! Who is calling and what they may do: account roles, API key scopes, the authenticated
//! principal, and the primitives behind them (argon2 password hashes, hashed API keys with
//! a visible prefix, HS256 JWTs with expiry). Secret comparisons are constant-time.

use std::collections::BTreeSet;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::{AccountId, ApiKeyId, TenantId};

/// Account roles, from most to least powerful. `admin` is the platform operator and the
/// only role that may read across tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Owner,
    Member,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Owner => "owner",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Role::Admin, Role::Owner, Role::Member, Role::Viewer]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// What an API key may be used for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Send events and profiles.
    Ingest,
    /// Read analytics.
    Read,
    /// Call the LLM gateway.
    Gateway,
    /// Call model prediction APIs.
    Predict,
    /// Manage the tenant: keys, configuration. Implies every other scope of the tenant.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Ingest,
        Scope::Read,
        Scope::Gateway,
        Scope::Predict,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Gateway => "gateway",
            Scope::Predict => "predict",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Parses a comma-separated list such as `ingest,read`.
    pub fn parse_list(s: &str) -> Result<BTreeSet<Scope>, String> {
        let mut out = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            out.insert(Scope::parse(part).ok_or_else(|| {
                format!(
                    "unknown scope '{part}'; expected one of {}",
                    Self::ALL.map(Scope::as_str).join(", ")
                )
            })?);
        }
        if out.is_empty() {
            return Err("at least one scope is required".into());
        }
        Ok(out)
    }
}

/// An operation that needs permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Ingest,
    Read,
    Gateway,
    Predict,
    /// Manage the caller's own tenant (keys, projects, settings).
    ManageTenant,
    /// Platform operations: create tenants, read across tenants.
    Platform,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Account {
        id: AccountId,
        role: Role,
    },
    ApiKey {
        id: ApiKeyId,
        scopes: BTreeSet<Scope>,
    },
}

/// The authenticated caller. Every store call takes its tenant from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: TenantId,
    pub credential: Credential,
}

impl Principal {
    /// The API key the caller authenticated with (none for a signed-in account).
    pub fn api_key_id(&self) -> Option<ApiKeyId> {
        match &self.credential {
            Credential::ApiKey { id, .. } => Some(*id),
            Credential::Account { .. } => None,
        }
    }

    pub fn can(&self, action: Action) -> bool {
        match &self.credential {
            Credential::Account { role, .. } => match role {
                Role::Admin => true,
                Role::Owner => action != Action::Platform,
                Role::Member => matches!(
                    action,
                    Action::Ingest | Action::Read | Action::Gateway | Action::Predict
                ),
                Role::Viewer => action == Action::Read,
            },
            Credential::ApiKey { scopes, .. } => {
                if scopes.contains(&Scope::Admin) {
                    return action != Action::Platform;
                }
                let needed = match action {
                    Action::Ingest => Scope::Ingest,
                    Action::Read => Scope::Read,
                    Action::Gateway => Scope::Gateway,
                    Action::Predict => Scope::Predict,
                    Action::ManageTenant | Action::Platform => return false,
                };
                scopes.contains(&needed)
            }
        }
    }

    pub fn is_platform_admin(&self) -> bool {
        self.can(Action::Platform)
    }

    /// The tenant a request acts on: the caller's own, or for a platform admin any tenant
    /// named explicitly.
    pub fn effective_tenant(&self, requested: Option<TenantId>) -> Result<TenantId, TenantAccess> {
        match requested {
            None => Ok(self.tenant_id),
            Some(t) if t == self.tenant_id => Ok(t),
            Some(t) if self.is_platform_admin() => Ok(t),
            Some(_) => Err(TenantAccess::Denied),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantAccess {
    Denied,
}

// ---------------------------------------------------------------- passwords

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Verifies a password against an argon2 PHC string (constant-time inside argon2).
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A random password for generated accounts (24 alphanumerics, ~142 bits).
pub fn generate_password() -> String {
    random_alphanumeric(24)
}

pub const MIN_PASSWORD_LEN: usize = 10;
/// Long enough for any passphrase, short enough that hashing it costs nothing extra.
pub const MAX_PASSWORD_LEN: usize = 256;
/// The longest e-mail address (RFC 5321's path limit less its brackets).
pub const MAX_EMAIL_LEN: usize = 254;
/// The longest password a login may present (longer ones cannot match a stored one).
pub const MAX_LOGIN_PASSWORD_LEN: usize = 1024;

fn random_alphanumeric(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

// ---------------------------------------------------------------- API keys

/// API keys look like `tly_<prefix>_<secret>`: the 8-character prefix is stored in clear
/// to find and display the key; the whole key is stored only as a SHA-256 digest (keys
/// are 190 bits of randomness, so a fast hash is the right tool, unlike passwords).
pub const API_KEY_MARKER: &str = "tly_";
const PREFIX_LEN: usize = 8;
const SECRET_LEN: usize = 32;

#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The full key, shown once.
    pub key: String,
    pub prefix: String,
    pub hash: String,
}

pub fn generate_api_key() -> GeneratedKey {
    let prefix: String = random_alphanumeric(PREFIX_LEN).to_ascii_lowercase();
    let secret = random_alphanumeric(SECRET_LEN);
    let key = format!("{API_KEY_MARKER}{prefix}_{secret}");
    let hash = hash_api_key(&key);
    GeneratedKey { key, prefix, hash }
}

pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The prefix of something shaped like an API key, or `None`.
pub fn api_key_prefix(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(API_KEY_MARKER)?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == PREFIX_LEN && !secret.is_empty()).then_some(prefix)
}

/// Constant-time comparison of a presented key against a stored digest.
pub fn api_key_matches(presented: &str, stored_hash: &str) -> bool {
    let computed = hash_api_key(presented);
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

// ---------------------------------------------------------------- JWT

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: AccountId,
    pub tid: TenantId,
    pub role: Role,
    /// The session: logging out revokes this id alone.
    pub sid: uuid::Uuid,
    /// The account's session version when issued; revoking all of an account's sessions
    /// moves the version on.
    pub ver: i64,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

const ISSUER: &str = "tally";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("token is invalid")]
    Invalid,
}

/// Issues and verifies HS256 session tokens.
#[derive(Clone)]
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: i64,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    pub fn new(secret: &[u8], ttl_secs: i64) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_secs,
        }
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// Returns the token and its expiry (Unix seconds), for a new session of `account`.
    pub fn issue(
        &self,
        account: &crate::tenancy::Account,
        now_secs: i64,
    ) -> Result<(String, i64), TokenError> {
        let claims = Claims {
            sub: account.id,
            tid: account.tenant_id,
            role: account.role,
            sid: uuid::Uuid::new_v4(),
            ver: account.session_version,
            iat: now_secs,
            exp: now_secs + self.ttl_secs,
            iss: ISSUER.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok((token, claims.exp))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Tokens from before sessions existed lack `sid`/`ver` and fail to decode.
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// A fresh 256-bit signing secret, hex-encoded.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(credential: Credential) -> Principal {
        Principal {
            tenant_id: TenantId::generate(),
            credential,
        }
    }

    #[test]
    fn roles_and_scopes_grant_what_they_say() {
        let viewer = principal(Credential::Account {
            id: AccountId::generate(),
            role: Role::Viewer,
        });
        assert!(viewer.can(Action::Read) && !viewer.can(Action::Ingest));
        let member = principal(Credential::Account {
            id: AccountId::generate(),
            role: Role::Member,
        });
        assert!(member.can(Action::Ingest) && !member.can(Action::ManageTenant));
        let owner = principal(Credential::Account {
            id: AccountId::generate(),
            role: Role::Owner,
        });
        assert!(owner.can(Action::ManageTenant) && !owner.can(Action::Platform));
        let admin = principal(Credential::Account {
            id: AccountId::generate(),
            role: Role::Admin,
        });
        assert!(admin.can(Action::Platform));

        let ingest_key = principal(Credential::ApiKey {
            id: ApiKeyId::generate(),
            scopes: [Scope::Ingest].into(),
        });
        assert!(ingest_key.can(Action::Ingest) && !ingest_key.can(Action::Read));
        let admin_key = principal(Credential::ApiKey {
            id: ApiKeyId::generate(),
            scopes: [Scope::Admin].into(),
        });
        assert!(
            admin_key.can(Action::Read)
                && admin_key.can(Action::ManageTenant)
                && !admin_key.can(Action::Platform)
        );
    }

    #[test]
    fn only_platform_admin_crosses_tenants() {
        let other = TenantId::generate();
        let owner = principal(Credential::Account {
            id: AccountId::generate(),
            role: Role::Owner,
        });
        assert_eq!(
            owner.effective_tenant(Some(other)),
            Err(TenantAccess::Denied)
        );
        assert_eq!(owner.effective_tenant(None), Ok(owner.tenant_id));
        let admin = principal(Credential::Account {
            id: AccountId::generate(),
            role: Role::Admin,
        });
        assert_eq!(admin.effective_tenant(Some(other)), Ok(other));
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn api_keys_round_trip_and_reject_tampering() {
        let k = generate_api_key();
        assert_eq!(api_key_prefix(&k.key), Some(k.prefix.as_str()));
        assert!(api_key_matches(&k.key, &k.hash));
        let mut tampered = k.key.clone();
        tampered.pop();
        tampered.push('!');
        assert!(!api_key_matches(&tampered, &k.hash));
        assert_eq!(api_key_prefix("Bearer nope"), None);
        assert_eq!(api_key_prefix("tly_short_x"), None);
    }

    #[test]
    fn scope_lists_parse() {
        assert_eq!(
            Scope::parse_list("ingest, read").unwrap(),
            [Scope::Ingest, Scope::Read].into()
        );
        assert!(Scope::parse_list("ingest,root").is_err());
        assert!(Scope::parse_list("").is_err());
    }

    #[test]
    fn tokens_expire_and_forgeries_fail() {
        let signer = TokenSigner::new(b"secret-one", 60);
        let account = crate::tenancy::Account {
            id: AccountId::generate(),
            tenant_id: TenantId::generate(),
            email: "a@b.co".into(),
            password_hash: String::new(),
            role: Role::Member,
            created_at: 0,
            disabled_at: None,
            session_version: 3,
        };
        let now = chrono::Utc::now().timestamp();
        let (tok, exp) = signer.issue(&account, now).unwrap();
        assert_eq!(exp, now + 60);
        let claims = signer.verify(&tok).unwrap();
        assert_eq!(
            (claims.sub, claims.tid, claims.role, claims.ver),
            (account.id, account.tenant_id, Role::Member, 3)
        );
        let (again, _) = signer.issue(&account, now).unwrap();
        assert_ne!(
            signer.verify(&again).unwrap().sid,
            claims.sid,
            "one id per session"
        );

        let (old, _) = signer.issue(&account, now - 120).unwrap();
        assert_eq!(signer.verify(&old), Err(TokenError::Expired));

        let other = TokenSigner::new(b"secret-two", 60);
        assert_eq!(other.verify(&tok), Err(TokenError::Invalid));
        assert_eq!(signer.verify("a.b.c"), Err(TokenError::Invalid));
        // alg=none forgery
        let parts: Vec<&str> = tok.split('.').collect();
        let none_header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"none","typ":"JWT"}"#,
        );
        assert_eq!(
            signer.verify(&format!("{none_header}.{}.", parts[1])),
            Err(TokenError::Invalid)
        );
    }
}
