//! Authentication: turns a bearer token (JWT or API key) into a `Principal`, logs accounts
//! in (throttled per account and per client IP) and out.
//!
//! A session token is checked against the account on every request: it must exist, be
//! enabled, still be in the token's tenant, and not have ended the token's session (logout)
//! or all its sessions (a newer session version). The account and session lookups are
//! cached for `SESSION_TTL`, so the hot path costs no database read; changes made through
//! this node apply at once, those made by another process within the TTL.

use std::net::IpAddr;
use std::time::Duration;

use tally_core::auth::{self, Claims, Credential, Principal, TokenError, TokenSigner};
use tally_core::ratelimit::Quota;
use tally_core::tenancy::{Account, ApiKey};
use tally_core::{AccountId, TenantId};
use tally_store::Stores;

use crate::audit::{Actor, Entry};
use crate::error::{AccessError, AccessResult};
use crate::passwords::{PasswordError, Passwords};
use crate::Access;
use tally_core::audit::{action, Outcome};
use tally_core::cache::TtlCache;
use tally_core::limiter::RateLimiter;

/// How long an account's state or a session's revocation may be served from memory.
const SESSION_TTL: Duration = Duration::from_secs(5);
/// How many login attempts a minute are allowed.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Per e-mail address (known or not, so that both look alike).
    pub per_account: Quota,
    /// Per client IP.
    pub per_ip: Quota,
}

pub struct Authenticator {
    stores: Stores,
    access: Access,
    signer: TokenSigner,
    keys: TtlCache<String, ApiKey>,
    accounts: TtlCache<AccountId, Option<Account>>,
    /// Moved on by every `forget_account`: an account read before a change must not be
    /// cached after it.
    account_epoch: std::sync::atomic::AtomicU64,
    revoked: TtlCache<uuid::Uuid, bool>,
    passwords: Passwords,
    limiter: std::sync::Arc<RateLimiter>,
    login_limits: LoginLimits,
    /// A valid argon2 hash of a random password, verified against when the e-mail is
    /// unknown so that both failures take the same time.
    dummy_hash: String,
}

pub struct LoginResult {
    pub token: String,
    pub expires_at: i64,
    pub expires_in: i64,
    pub account: tally_core::tenancy::Account,
}

impl Authenticator {
    pub fn new(
        access: Access,
        signer: TokenSigner,
        limiter: std::sync::Arc<RateLimiter>,
        login_limits: LoginLimits,
    ) -> AccessResult<Self> {
        let dummy_hash =
            auth::hash_password(&auth::generate_password()).map_err(AccessError::internal)?;
        Ok(Self {
            stores: access.stores.clone(),
            access,
            signer,
            keys: TtlCache::new(Duration::from_secs(30), 10_000),
            accounts: TtlCache::new(SESSION_TTL, 10_000),
            account_epoch: std::sync::atomic::AtomicU64::new(0),
            revoked: TtlCache::new(SESSION_TTL, 100_000),
            passwords: Passwords::start().map_err(AccessError::internal)?,
            limiter,
            login_limits,
            dummy_hash,
        })
    }

    /// Hashes a new password on the password threads.
    pub async fn hash_password(&self, password: &str) -> AccessResult<String> {
        self.passwords.hash(password).await.map_err(password_error)
    }

    pub async fn authenticate(&self, token: &str) -> AccessResult<Principal> {
        if let Some(prefix) = auth::api_key_prefix(token) {
            return self.authenticate_key(prefix, token).await;
        }
        let claims = self.verify(token)?;
        let account = self.session_account(&claims).await?;
        Ok(Principal {
            tenant_id: account.tenant_id,
            credential: Credential::Account {
                id: account.id,
                role: account.role,
            },
        })
    }

    fn verify(&self, token: &str) -> AccessResult<Claims> {
        self.signer.verify(token).map_err(|e| match e {
            TokenError::Expired => {
                AccessError::Unauthorized("TOKEN_EXPIRED", "token has expired".into())
            }
            TokenError::Invalid => {
                AccessError::Unauthorized("UNAUTHORIZED", "invalid token".into())
            }
        })
    }

    /// The account behind a verified token, if its session is still valid. The role is the
    /// account's current one, not the one the token was issued with.
    async fn session_account(&self, claims: &Claims) -> AccessResult<Account> {
        let ended = |why: &str| AccessError::Unauthorized("SESSION_ENDED", why.into());
        let account = match self.accounts.get(&claims.sub) {
            Some(a) => a,
            None => {
                use std::sync::atomic::Ordering;
                let epoch = self.account_epoch.load(Ordering::Acquire);
                let a = self.stores.identity.get_account(claims.sub).await?;
                if self.account_epoch.load(Ordering::Acquire) == epoch {
                    self.accounts.insert(claims.sub, a.clone());
                }
                a
            }
        };
        let account = account.ok_or_else(|| ended("the account no longer exists"))?;
        if account.tenant_id != claims.tid {
            return Err(ended("the account no longer exists"));
        }
        if account.disabled_at.is_some() {
            return Err(ended("the account is disabled"));
        }
        if account.session_version != claims.ver {
            return Err(ended("the session was ended; log in again"));
        }
        let revoked = match self.revoked.get(&claims.sid) {
            Some(r) => r,
            None => {
                let r = self.stores.identity.session_revoked(claims.sid).await?;
                self.revoked.insert(claims.sid, r);
                r
            }
        };
        if revoked {
            return Err(ended("the session was ended; log in again"));
        }
        Ok(account)
    }

    /// Ends the session of `token` (logout). Other sessions of the account go on.
    pub async fn logout(&self, token: &str) -> AccessResult<Account> {
        let now_secs = self.access.clock.now_secs();
        let claims = self.verify(token)?;
        let account = self.session_account(&claims).await?;
        self.stores
            .identity
            .revoke_session(claims.sid, claims.sub, claims.exp, now_secs)
            .await?;
        self.revoked.insert(claims.sid, true);
        Ok(account)
    }

    /// Forgets every key and account of a deleted tenant.
    pub fn forget_tenant(&self, tenant: TenantId) {
        self.account_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.keys.remove_where(|k| k.tenant_id == tenant);
        self.accounts
            .remove_where(|a| a.as_ref().is_some_and(|a| a.tenant_id == tenant));
    }

    /// Forgets what is cached of an account after it changed here (disabled, deleted,
    /// sessions ended), so that its tokens are judged afresh at once.
    pub fn forget_account(&self, id: AccountId) {
        self.account_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.accounts.remove(&id);
    }

    async fn authenticate_key(&self, prefix: &str, presented: &str) -> AccessResult<Principal> {
        let key = match self.keys.get(&prefix.to_owned()) {
            Some(k) => Some(k),
            None => {
                let found = self.stores.identity.find_api_key(prefix).await?;
                if let Some(k) = &found {
                    self.keys.insert(prefix.to_owned(), k.clone());
                }
                found
            }
        };
        let invalid = || AccessError::Unauthorized("UNAUTHORIZED", "invalid API key".into());
        let key = key.ok_or_else(invalid)?;
        if !auth::api_key_matches(presented, &key.key_hash) {
            return Err(invalid());
        }
        if key.revoked_at.is_some() {
            return Err(AccessError::Unauthorized(
                "UNAUTHORIZED",
                "API key has been revoked".into(),
            ));
        }
        Ok(Principal {
            tenant_id: key.tenant_id,
            credential: Credential::ApiKey {
                id: key.id,
                scopes: key.scopes,
            },
        })
    }

    /// Forgets a key at once (after revocation on this node).
    pub fn forget_key(&self, tenant: TenantId, id: tally_core::ApiKeyId) {
        self.keys
            .remove_where(|k| k.id == id && k.tenant_id == tenant);
    }

    /// Checks a password. Attempts are limited per e-mail address and per client IP
    /// (429 with the wait) before any hashing; a disabled account cannot log in. Logins
    /// and failed logins go into the audit trail.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> AccessResult<LoginResult> {
        let now_secs = self.access.clock.now_secs();
        // Bounded before anything keeps them (limiter keys, logs, the audit trail).
        if email.chars().count() > auth::MAX_EMAIL_LEN {
            return Err(tally_core::FieldError::invalid(
                "email",
                format!("must be at most {} characters", auth::MAX_EMAIL_LEN),
            )
            .into());
        }
        if password.chars().count() > auth::MAX_LOGIN_PASSWORD_LEN {
            return Err(tally_core::FieldError::invalid(
                "password",
                format!(
                    "must be at most {} characters",
                    auth::MAX_LOGIN_PASSWORD_LEN
                ),
            )
            .into());
        }
        let throttled = |wait: Duration| AccessError::RateLimited {
            message: "too many login attempts; retry later".into(),
            retry_after_secs: wait.as_secs().max(1),
        };
        if let Some(ip) = client {
            self.limiter
                .check(&format!("login-ip:{ip}"), self.login_limits.per_ip)
                .map_err(throttled)?;
        }
        self.limiter
            .check(
                &format!("login-account:{}", email.to_lowercase()),
                self.login_limits.per_account,
            )
            .map_err(throttled)?;
        let account = self.stores.identity.find_account_by_email(email).await?;
        let hash = account
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |a| a.password_hash.as_str());
        let ok = self
            .passwords
            .verify(password, hash)
            .await
            .map_err(password_error)?;
        let account = match (ok, account) {
            (true, Some(a)) if a.disabled_at.is_none() => a,
            (_, tried) => {
                // Never the password; the e-mail as typed, to see what was tried. An
                // attempt on an existing account goes into its tenant's trail.
                tracing::info!(email, ip = ?client, "failed login");
                let entry = Entry {
                    outcome: Outcome::Failure,
                    ..Entry::success(
                        tried.as_ref().map(|a| a.tenant_id),
                        action::LOGIN_FAILED,
                        tried.as_ref().map(|a| format!("account:{}", a.id)),
                    )
                };
                self.access
                    .record(&Actor::anonymous(email, client), entry)
                    .await;
                return Err(AccessError::Unauthorized(
                    "INVALID_CREDENTIALS",
                    "email or password is incorrect".into(),
                ));
            }
        };
        let entry = Entry::account(&account, action::LOGIN);
        self.access
            .record(&Actor::account(&account, client), entry)
            .await;
        let (token, expires_at) = self
            .signer
            .issue(&account, now_secs)
            .map_err(AccessError::internal)?;
        Ok(LoginResult {
            token,
            expires_at,
            expires_in: self.signer.ttl_secs(),
            account,
        })
    }
}

fn password_error(e: PasswordError) -> AccessError {
    match e {
        PasswordError::Busy => AccessError::RateLimited {
            message: "too many logins in progress; retry shortly".into(),
            retry_after_secs: 1,
        },
        other => AccessError::internal(other),
    }
}
