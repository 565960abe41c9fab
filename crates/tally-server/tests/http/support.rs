//! A tally app on a temporary data dir, with helpers to call it.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tally_access::tenancy::NewAccount;
use tally_core::auth::{Role, Scope};
use tally_core::TenantId;
use tally_server::{AppState, Config};
use tally_store::Stores;
use tower::ServiceExt;

pub struct TestApp {
    pub state: AppState,
    pub stores: Stores,
    pub dir: tempfile::TempDir,
    /// A tenant with an owner key holding every scope.
    pub tenant: TenantId,
    pub key: String,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl Resp {
    /// The error code of an envelope body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }
    pub fn field(&self) -> &str {
        self.body["error"]["details"]["field"]
            .as_str()
            .unwrap_or("<none>")
    }
}

pub async fn app() -> TestApp {
    app_with(|_| {}).await
}

pub async fn app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    // Tests call loopback only (DESIGN: outbound policy), and retry fast.
    config.outbound.allow = vec!["127.0.0.0/8".into(), "::1".into()];
    config.outbound.allow_public = false;
    config.gateway.retry_base_ms = 5;
    config.gateway.record_interval_ms = 10;
    tweak(&mut config);
    let stores = tally_server::open_store(&config, false).unwrap();
    let state = AppState::new(&config, stores.clone()).await.unwrap();
    let tenant = state.access.create_tenant("acme", None).await.unwrap().id;
    let (_, key) = state
        .access
        .create_api_key(tenant, "all", Scope::ALL.into_iter().collect())
        .await
        .unwrap();
    TestApp {
        state,
        stores,
        dir,
        tenant,
        key,
    }
}

impl TestApp {
    pub fn from_parts(
        state: AppState,
        stores: Stores,
        dir: tempfile::TempDir,
        tenant: TenantId,
        key: String,
    ) -> Self {
        Self {
            state,
            stores,
            dir,
            tenant,
            key,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(serde_json::to_vec(b).unwrap())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let svc = tally_server::api::service(self.state.clone());
        let resp = svc.oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Err(e) = serde_json::from_str::<UniqueKeys>(text) {
                // Not JSON at all (CSV, text) is fine; a key written twice is a defect:
                // parsers keep one of the two silently.
                assert!(
                    !e.to_string().starts_with("duplicate key"),
                    "{e} in the answer: {text}"
                );
            }
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.call("GET", uri, Some(&self.key), None).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> Resp {
        self.call("POST", uri, Some(&self.key), Some(&body)).await
    }

    /// A key of this app's tenant with the given scopes.
    pub async fn key_with(&self, scopes: &[Scope]) -> String {
        self.state
            .access
            .create_api_key(self.tenant, "scoped", scopes.iter().copied().collect())
            .await
            .unwrap()
            .1
    }

    /// Creates another tenant with an all-scope key.
    pub async fn other_tenant(&self) -> (TenantId, String) {
        let t = self
            .state
            .access
            .create_tenant("other", None)
            .await
            .unwrap()
            .id;
        let (_, key) = self
            .state
            .access
            .create_api_key(t, "k", Scope::ALL.into_iter().collect())
            .await
            .unwrap();
        (t, key)
    }

    /// Creates an account and logs it in; returns its JWT.
    pub async fn login_as(&self, tenant: TenantId, role: Role) -> String {
        self.account(tenant, role).await.2
    }

    /// A token signer with the server's own secret (to forge tokens as an insider could).
    pub async fn signer(&self) -> tally_core::auth::TokenSigner {
        let secret = self
            .stores
            .identity
            .get_setting("auth.jwt_secret")
            .await
            .unwrap()
            .unwrap();
        tally_core::auth::TokenSigner::new(secret.as_bytes(), 600)
    }

    /// Logs an existing account in; the response.
    pub async fn login(&self, email: &str) -> Resp {
        self.call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(&serde_json::json!({"email": email, "password": "long enough password"})),
        )
        .await
    }

    /// Creates an account and logs it in: its id, e-mail and JWT.
    pub async fn account(
        &self,
        tenant: TenantId,
        role: Role,
    ) -> (tally_core::AccountId, String, String) {
        let email = format!(
            "{}-{}@example.com",
            role.as_str(),
            uuid::Uuid::new_v4().simple()
        );
        let account = self
            .state
            .access
            .create_account(NewAccount {
                tenant_id: tenant,
                email: &email,
                password: "long enough password",
                role,
            })
            .await
            .unwrap();
        let r = self.login(&email).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let token = r.body["access_token"].as_str().unwrap().to_owned();
        (account.id, email, token)
    }
}

/// A JSON value that refuses objects with a key written twice.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<UniqueKeys, A::Error> {
                while a.next_element::<UniqueKeys>()?.is_some() {}
                Ok(UniqueKeys)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(k) = a.next_key::<String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    a.next_value::<UniqueKeys>()?;
                }
                Ok(UniqueKeys)
            }
        }
        d.deserialize_any(V)
    }
}

/// An admin account of `tenant` that was never stored.
pub fn ghost(tenant: TenantId) -> tally_core::tenancy::Account {
    tally_core::tenancy::Account {
        id: tally_core::AccountId::generate(),
        tenant_id: tenant,
        email: "ghost@example.com".into(),
        password_hash: String::new(),
        role: Role::Admin,
        created_at: 0,
        disabled_at: None,
        session_version: 0,
    }
}
