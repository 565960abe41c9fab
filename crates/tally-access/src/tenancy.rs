//! Tenants, accounts and API keys: creation rules shared by the HTTP API and the CLI, and
//! the first-start bootstrap.

use std::collections::BTreeSet;

use tally_core::auth::{self, Role, Scope};
use tally_core::tenancy::{valid_email, Account, ApiKey, Tenant};
use tally_core::{AccountId, ApiKeyId, FieldError, TenantId};
use tally_store::StoreError;

use crate::error::{AccessError, AccessResult};
use crate::Access;

pub const MAX_NAME_LEN: usize = 200;
/// The largest storage limit: 2^53 − 1, exact in every JSON parser.
pub const MAX_EVENTS_LIMIT: u64 = 9_007_199_254_740_991;

/// A name: at most `MAX_NAME_LEN` characters as sent, printable, not only spaces; kept
/// trimmed.
fn check_name(field: &str, raw: &str) -> Result<String, FieldError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(FieldError::invalid(field, "must not be empty"));
    }
    if raw.chars().count() > MAX_NAME_LEN || raw.chars().any(char::is_control) {
        return Err(FieldError::invalid(
            field,
            format!("must be at most {MAX_NAME_LEN} printable characters"),
        ));
    }
    Ok(name.to_owned())
}

pub struct NewAccount<'a> {
    pub tenant_id: TenantId,
    pub email: &'a str,
    pub password: &'a str,
    pub role: Role,
}

impl Access {
    pub async fn create_tenant(&self, name: &str, max_events: Option<u64>) -> AccessResult<Tenant> {
        self.create_tenant_as(TenantId::generate(), name, max_events)
            .await
    }

    /// Creates a tenant with an id chosen beforehand (the demo records its ids before it
    /// creates anything, so an interrupted load can be found and removed).
    pub async fn create_tenant_as(
        &self,
        id: TenantId,
        name: &str,
        max_events: Option<u64>,
    ) -> AccessResult<Tenant> {
        let name = check_name("name", name)?;
        if max_events.is_some_and(|n| n == 0 || n > MAX_EVENTS_LIMIT) {
            return Err(FieldError::invalid(
                "max_events",
                format!("must be from 1 to {MAX_EVENTS_LIMIT}"),
            )
            .into());
        }
        let tenant = Tenant {
            id,
            name,
            max_events,
            created_at: self.clock.now_micros(),
        };
        self.stores.identity.create_tenant(tenant.clone()).await?;
        Ok(tenant)
    }

    pub async fn require_tenant(&self, id: TenantId) -> AccessResult<Tenant> {
        self.stores
            .identity
            .get_tenant(id)
            .await?
            .ok_or(AccessError::NotFound("tenant"))
    }

    pub async fn create_account(&self, new: NewAccount<'_>) -> AccessResult<Account> {
        let email = new.email;
        if !valid_email(email) {
            return Err(FieldError::invalid("email", "must be a valid e-mail address").into());
        }
        if new.password.chars().count() < auth::MIN_PASSWORD_LEN {
            return Err(FieldError::invalid(
                "password",
                format!("must be at least {} characters", auth::MIN_PASSWORD_LEN),
            )
            .into());
        }
        if new.password.chars().count() > auth::MAX_PASSWORD_LEN {
            return Err(FieldError::invalid(
                "password",
                format!("must be at most {} characters", auth::MAX_PASSWORD_LEN),
            )
            .into());
        }
        self.require_tenant(new.tenant_id).await?;
        let password = new.password.to_owned();
        let password_hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
            .await
            .map_err(AccessError::internal)?
            .map_err(AccessError::internal)?;
        let account = Account {
            id: AccountId::generate(),
            tenant_id: new.tenant_id,
            email: email.to_owned(),
            password_hash,
            role: new.role,
            created_at: self.clock.now_micros(),
            disabled_at: None,
            session_version: 0,
        };
        self.stores.identity.create_account(account.clone()).await?;
        Ok(account)
    }

    /// A new key; the returned string is the only time the full key exists in clear.
    pub async fn create_api_key(
        &self,
        tenant_id: TenantId,
        name: &str,
        scopes: BTreeSet<Scope>,
    ) -> AccessResult<(ApiKey, String)> {
        let name = check_name("name", name)?;
        if scopes.is_empty() {
            return Err(FieldError::invalid("scopes", "at least one scope is required").into());
        }
        self.require_tenant(tenant_id).await?;
        // A prefix collision (1 in 36^8 per pair) is retried with a fresh key.
        for _ in 0..3 {
            let generated = auth::generate_api_key();
            let key = ApiKey {
                id: ApiKeyId::generate(),
                tenant_id,
                name: name.clone(),
                prefix: generated.prefix,
                key_hash: generated.hash,
                scopes: scopes.clone(),
                created_at: self.clock.now_micros(),
                revoked_at: None,
            };
            match self.stores.identity.create_api_key(key.clone()).await {
                Ok(()) => return Ok((key, generated.key)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AccessError::Internal(
            "could not allocate a unique API key prefix".into(),
        ))
    }

    /// Creates the first platform admin on an empty data dir. Returns the e-mail and the
    /// password (generated unless given) to show once, or `None` when accounts exist.
    pub async fn bootstrap_admin(
        &self,
        email: &str,
        password: Option<&str>,
    ) -> AccessResult<Option<(String, String)>> {
        if self.stores.identity.count_accounts().await? > 0 {
            return Ok(None);
        }
        let tenant = self.create_tenant("system", None).await?;
        let password = password.map_or_else(auth::generate_password, str::to_owned);
        self.create_account(NewAccount {
            tenant_id: tenant.id,
            email,
            password: &password,
            role: Role::Admin,
        })
        .await?;
        Ok(Some((email.to_owned(), password)))
    }

    /// The JWT signing secret: from configuration, or generated once and persisted.
    pub async fn signing_secret(&self, configured: Option<&str>) -> AccessResult<String> {
        if let Some(s) = configured {
            if s.len() < 32 {
                return Err(FieldError::invalid(
                    "auth.jwt_secret",
                    "must be at least 32 characters",
                )
                .into());
            }
            return Ok(s.to_owned());
        }
        // Read first: a restart writes nothing here (it may be short of disk space).
        if let Some(secret) = self.stores.identity.get_setting("auth.jwt_secret").await? {
            return Ok(secret);
        }
        Ok(self
            .stores
            .identity
            .init_setting("auth.jwt_secret", &auth::generate_secret())
            .await?)
    }

    /// The account `id` of `tenant`, if `actor` may manage it: owners and admins manage the
    /// accounts of their tenant, only the admin role manages admin accounts, and nobody
    /// disables or deletes their own account here (that would lock them out mid-request).
    pub async fn managed_account(
        &self,
        actor: &auth::Principal,
        tenant: TenantId,
        id: AccountId,
    ) -> AccessResult<Account> {
        let account = self
            .stores
            .identity
            .get_account(id)
            .await?
            .filter(|a| a.tenant_id == tenant)
            .ok_or(AccessError::NotFound("account"))?;
        if account.role == Role::Admin && !actor.is_platform_admin() {
            return Err(AccessError::Forbidden(
                "only the admin role may manage admin accounts".into(),
            ));
        }
        if matches!(actor.credential, auth::Credential::Account { id: me, .. } if me == id) {
            return Err(AccessError::Conflict(
                "you cannot disable or delete your own account; ask another owner or admin".into(),
            ));
        }
        Ok(account)
    }

    /// Disables or re-enables an account; a disabled account's tokens are refused and it
    /// cannot log in.
    pub async fn set_account_disabled(
        &self,
        account: &Account,
        disabled: bool,
    ) -> AccessResult<Account> {
        let at = disabled.then(|| {
            account
                .disabled_at
                .unwrap_or_else(|| self.clock.now_micros())
        });
        if !self
            .stores
            .identity
            .set_account_disabled(account.tenant_id, account.id, at)
            .await?
        {
            return Err(AccessError::NotFound("account"));
        }
        Ok(Account {
            disabled_at: at,
            ..account.clone()
        })
    }

    pub async fn delete_account(&self, account: &Account) -> AccessResult<()> {
        if !self
            .stores
            .identity
            .delete_account(account.tenant_id, account.id)
            .await?
        {
            return Err(AccessError::NotFound("account"));
        }
        Ok(())
    }

    /// Deletes a tenant (as looked up by the caller) and everything it owns (events, profiles, usage, quotas, prices,
    /// accounts, keys), keeping its audit trail. Refused for the tenant the caller belongs
    /// to, so that an admin cannot delete the ground under them.
    pub async fn delete_tenant(
        &self,
        actor_tenant: Option<TenantId>,
        tenant: &Tenant,
    ) -> AccessResult<tally_store::DeletionReport> {
        let tenant = tenant.id;
        if actor_tenant == Some(tenant) {
            return Err(AccessError::Conflict(
                "you cannot delete the tenant your own account belongs to".into(),
            ));
        }
        Ok(self.stores.deletion.delete_tenant(tenant).await?)
    }

    pub async fn list_tenants(&self) -> AccessResult<Vec<Tenant>> {
        Ok(self.stores.identity.list_tenants().await?)
    }

    pub async fn list_accounts(&self, tenant: TenantId) -> AccessResult<Vec<Account>> {
        Ok(self.stores.identity.list_accounts(tenant).await?)
    }

    pub async fn list_api_keys(&self, tenant: TenantId) -> AccessResult<Vec<ApiKey>> {
        Ok(self.stores.identity.list_api_keys(tenant).await?)
    }

    /// Revokes one of the tenant's active keys, as of now.
    pub async fn revoke_api_key(&self, tenant: TenantId, id: ApiKeyId) -> AccessResult<()> {
        let now = self.clock.now_micros();
        if !self.stores.identity.revoke_api_key(tenant, id, now).await? {
            return Err(AccessError::NotFound("api key"));
        }
        Ok(())
    }

    /// Ends every session of the account (all its tokens); `NotFound` if the tenant has
    /// no such account.
    pub async fn end_all_sessions(&self, tenant: TenantId, id: AccountId) -> AccessResult<()> {
        if !self.stores.identity.end_all_sessions(tenant, id).await? {
            return Err(AccessError::NotFound("account"));
        }
        Ok(())
    }
}
