//! Provider credentials as stored (seed 003 ai_providers): the secret is sealed (AEAD, by
//! the gateway) before it reaches the store, and shown only masked.

use serde::{Deserialize, Serialize};

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI's own API.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google Gemini's generateContent API.
    Google,
    /// Any server speaking OpenAI's chat completions (vLLM, Ollama, Azure-style
    /// deployments), at a configured base URL.
    OpenaiCompatible,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] = [
        Self::Openai,
        Self::Anthropic,
        Self::Google,
        Self::OpenaiCompatible,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Google => "google",
            Self::OpenaiCompatible => "openai_compatible",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The public endpoint used when a credential names no base URL.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Self::Openai => Some("https://api.openai.com/v1"),
            Self::Anthropic => Some("https://api.anthropic.com/v1"),
            Self::Google => Some("https://generativelanguage.googleapis.com/v1beta"),
            Self::OpenaiCompatible => None,
        }
    }
}

/// One credential as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub id: i64,
    /// The name calls route by: `openai`, `anthropic`, `google`, or a tenant's own (e.g.
    /// `local-vllm`, addressed as `local-vllm/llama3`). Unique per tenant.
    pub name: String,
    pub kind: ProviderKind,
    /// `None`: the kind's public endpoint.
    pub base_url: Option<String>,
    /// Nonce followed by ciphertext and tag, sealed under the master key with the
    /// tenant, the name and the key's version as associated data.
    pub sealed: Vec<u8>,
    /// Which master key sealed it (rotation re-seals every credential under the new one).
    pub key_version: u32,
    /// `sk-…abcd`: what lists show.
    pub masked: String,
    /// Models this provider serves, for names the catalog does not know (e.g. a vLLM
    /// server's), and the order deployments are weighed in.
    pub models: Vec<String>,
    /// Share of traffic when several credentials serve the same model (1–1000).
    pub weight: u32,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `sk-…abcd`: a short prefix up to its dash (`sk-`, at most 3 characters before it) and
/// the last four characters; a secret under 12 characters shows only its last one.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return format!(
            "…{}",
            chars.last().map(|c| c.to_string()).unwrap_or_default()
        );
    }
    let prefix = match secret.split_once('-') {
        Some((head, _)) if (1..=3).contains(&head.chars().count()) => format!("{head}-"),
        _ => String::new(),
    };
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_show_the_prefix_and_last_four() {
        assert_eq!(mask("sk-proj-abcdefghijklmnop1234"), "sk-…1234");
        assert_eq!(mask("AIzaSyD-abcdefghijkl9876"), "…9876");
        assert_eq!(mask("short"), "…t");
        assert_eq!(mask(""), "…");
    }

    #[test]
    fn kinds_round_trip() {
        for k in ProviderKind::ALL {
            assert_eq!(ProviderKind::parse(k.as_str()), Some(k));
        }
    }
}
