//! Authentication: turns a bearer token (JWT or API key) into a `Principal`, and logs
//! accounts in.

use std::time::Duration;

use tally_core::auth::{self, Credential, Principal, TokenError, TokenSigner};
use tally_core::tenancy::ApiKey;
use tally_core::TenantId;
use tally_store::Stores;

use super::cache::TtlCache;
use crate::error::{ApiError, ApiResult};

pub struct Authenticator {
    stores: Stores,
    signer: TokenSigner,
    keys: TtlCache<String, ApiKey>,
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
    pub fn new(stores: Stores, signer: TokenSigner) -> ApiResult<Self> {
        let dummy_hash =
            auth::hash_password(&auth::generate_password()).map_err(ApiError::internal)?;
        Ok(Self {
            stores,
            signer,
            keys: TtlCache::new(Duration::from_secs(30), 10_000),
            dummy_hash,
        })
    }

    pub async fn authenticate(&self, token: &str) -> ApiResult<Principal> {
        if let Some(prefix) = auth::api_key_prefix(token) {
            return self.authenticate_key(prefix, token).await;
        }
        let claims = self.signer.verify(token).map_err(|e| match e {
            TokenError::Expired => {
                ApiError::Unauthorized("TOKEN_EXPIRED", "token has expired".into())
            }
            TokenError::Invalid => ApiError::Unauthorized("UNAUTHORIZED", "invalid token".into()),
        })?;
        Ok(Principal {
            tenant_id: claims.tid,
            credential: Credential::Account {
                id: claims.sub,
                role: claims.role,
            },
        })
    }

    async fn authenticate_key(&self, prefix: &str, presented: &str) -> ApiResult<Principal> {
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
        let invalid = || ApiError::Unauthorized("UNAUTHORIZED", "invalid API key".into());
        let key = key.ok_or_else(invalid)?;
        if !auth::api_key_matches(presented, &key.key_hash) {
            return Err(invalid());
        }
        if key.revoked_at.is_some() {
            return Err(ApiError::Unauthorized(
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

    pub async fn login(
        &self,
        email: &str,
        password: &str,
        now_secs: i64,
    ) -> ApiResult<LoginResult> {
        let account = self.stores.identity.find_account_by_email(email).await?;
        let hash = account
            .as_ref()
            .map_or(self.dummy_hash.clone(), |a| a.password_hash.clone());
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
            .await
            .map_err(ApiError::internal)?;
        let account = match (ok, account) {
            (true, Some(a)) => a,
            _ => {
                return Err(ApiError::Unauthorized(
                    "INVALID_CREDENTIALS",
                    "email or password is incorrect".into(),
                ))
            }
        };
        let (token, expires_at) = self
            .signer
            .issue(account.id, account.tenant_id, account.role, now_secs)
            .map_err(ApiError::internal)?;
        Ok(LoginResult {
            token,
            expires_at,
            expires_in: self.signer.ttl_secs(),
            account,
        })
    }
}
