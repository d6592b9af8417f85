//! Who calls the shell (`[http.auth]`): with `mode = "jwt"` a request's
//! `Authorization: Bearer <token>` is verified here — signature (HS256,
//! RS256 or ES256, the key from the project), `exp`/`nbf` with the clock
//! leeway, `iss` and `aud` when configured — and becomes the [`Principal`]
//! that travels with the commands it submits. With `mode = "none"` nothing
//! is checked: every caller is local and trusted ([`Caller::Trusted`]).

use crate::config::{AuthConfig, AuthMode, JwtAlgorithm};
use axum::http::{HeaderMap, header};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use low_contract::{Principal, Value};

/// Who a request comes from, as the GraphQL resolvers see it (request data).
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// The shell checks no identities (`auth = "none"`): a local, trusted
    /// caller; its commands carry no principal.
    Trusted,
    /// The shell checks identities and the request has no token: it may
    /// read models that do not require authentication, nothing else.
    Anonymous,
    /// The request's token was verified.
    Verified(Principal),
}

impl Caller {
    /// The principal commands of this caller carry.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Caller::Verified(p) => Some(p),
            Caller::Trusted | Caller::Anonymous => None,
        }
    }
}

/// The keys tokens may be signed with.
enum Keys {
    /// One key for every token.
    One(DecodingKey),
    /// A JWKS: the token's `kid` picks the key (or the only one, without a `kid`).
    Set(JwkSet),
}

struct Verifier {
    keys: Keys,
    validation: Validation,
}

/// The project's identity check; cheap to share.
pub struct Auth {
    verifier: Option<Verifier>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.verifier.is_some() { "Auth(jwt)" } else { "Auth(none)" })
    }
}

impl Auth {
    /// No identity checks: every caller is trusted.
    pub fn none() -> Self {
        Self { verifier: None }
    }

    /// The check `[http.auth]` asks for, with its keys read; an error
    /// says what is missing or unreadable.
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        if config.mode == AuthMode::None {
            return Ok(Self::none());
        }
        let algorithm = match config.algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
        };
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let keys = match (config.algorithm, &config.secret, &config.key_file, &config.jwks_file) {
            (JwtAlgorithm::HS256, Some(secret), None, None) if !secret.trim().is_empty() => {
                Keys::One(DecodingKey::from_secret(secret.as_bytes()))
            }
            (JwtAlgorithm::HS256, ..) => {
                return Err("HS256 needs `secret` (or LOWSHELL_HTTP__AUTH__SECRET), and no key file".into());
            }
            (_, Some(_), ..) => return Err("`secret` is for HS256; RS256 and ES256 take public keys".into()),
            (alg, None, Some(file), None) => {
                let pem = read(file)?;
                let key = match alg {
                    JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    _ => DecodingKey::from_ec_pem(&pem),
                };
                Keys::One(
                    key.map_err(|e| format!("{} is not a {alg:?} public key in PEM: {e}", file.display()))?,
                )
            }
            (_, None, None, Some(file)) => {
                let set: JwkSet = serde_json::from_slice(&read(file)?)
                    .map_err(|e| format!("{} is not a JWKS (`{{\"keys\": [...]}}`): {e}", file.display()))?;
                if set.keys.is_empty() {
                    return Err(format!("{} has no keys", file.display()));
                }
                for jwk in &set.keys {
                    DecodingKey::from_jwk(jwk)
                        .map_err(|e| format!("{}: a key is unusable: {e}", file.display()))?;
                }
                Keys::Set(set)
            }
            (alg, None, None, None) => return Err(format!("{alg:?} needs `key-file` or `jwks-file`")),
            (_, None, Some(_), Some(_)) => return Err("give `key-file` or `jwks-file`, not both".into()),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway_s;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation.validate_nbf = true;
        Ok(Self { verifier: Some(Verifier { keys, validation }) })
    }

    /// Whether requests must prove who they are.
    pub fn is_on(&self) -> bool {
        self.verifier.is_some()
    }

    /// The principal a token proves, or why it proves nothing.
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let Some(verifier) = &self.verifier else {
            return Err("this shell checks no tokens".into());
        };
        let key = match &verifier.keys {
            Keys::One(key) => key.clone(),
            Keys::Set(set) => {
                let header = jsonwebtoken::decode_header(token).map_err(describe)?;
                let jwk = match &header.kid {
                    Some(kid) => {
                        set.find(kid).ok_or_else(|| format!("no key has the token's kid `{kid}`"))?
                    }
                    None if set.keys.len() == 1 => &set.keys[0],
                    None => return Err("the token has no `kid` to pick one of the keys".into()),
                };
                DecodingKey::from_jwk(jwk).map_err(describe)?
            }
        };
        let data = jsonwebtoken::decode::<Value>(token, &key, &verifier.validation).map_err(describe)?;
        let subject = match data.claims.get("sub") {
            Some(Value::String(sub)) if !sub.trim().is_empty() => sub.clone(),
            _ => return Err("the token's `sub` must be a non-empty string".into()),
        };
        Ok(Principal::new(subject, data.claims))
    }

    /// Who sends a request with these headers: [`Caller::Anonymous`] when
    /// it has no token, [`Caller::Trusted`] when the shell checks none; an
    /// error when its token proves nothing.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, String> {
        if !self.is_on() {
            return Ok(Caller::Trusted);
        }
        match headers.get(header::AUTHORIZATION) {
            None => Ok(Caller::Anonymous),
            Some(value) => {
                let value =
                    value.to_str().map_err(|_| "the Authorization header must be ASCII".to_owned())?;
                self.bearer(value)
            }
        }
    }

    /// The caller an `Authorization` value proves (`Bearer <token>`).
    pub fn bearer(&self, value: &str) -> Result<Caller, String> {
        if !self.is_on() {
            return Ok(Caller::Trusted);
        }
        let token = value
            .trim()
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| "the Authorization header must be `Bearer <token>`".to_owned())?;
        self.verify(token).map(Caller::Verified)
    }

    /// The caller a graphql-ws `connection_init` payload proves: its
    /// `Authorization` (any case; at the top or under `headers`), else the
    /// upgrade request's own.
    pub fn connection(&self, payload: &Value, upgrade: &Caller) -> Result<Caller, String> {
        if !self.is_on() {
            return Ok(Caller::Trusted);
        }
        let find = |object: &Value| {
            object.as_object().and_then(|o| {
                o.iter().find(|(k, _)| k.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.clone())
            })
        };
        match find(payload).or_else(|| payload.get("headers").and_then(find)) {
            Some(Value::String(value)) => self.bearer(&value),
            Some(_) => Err("`Authorization` in connection_init must be a string".into()),
            None => Ok(upgrade.clone()),
        }
    }
}

/// A verification error as the caller reads it.
fn describe(e: jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (`nbf`)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAudience => "the token is not for this audience (`aud`)".into(),
        ErrorKind::InvalidIssuer => "the token is not from the expected issuer (`iss`)".into(),
        ErrorKind::InvalidAlgorithm => "the token is signed with another algorithm".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
        _ => format!("the token is not valid: {e}"),
    }
}
