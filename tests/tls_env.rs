//! TLS material named as `env:NAME` is read from the environment, and errors name the source
//! but never show key material. A test binary of its own, because it sets an environment
//! variable, which is only sound while no other thread runs.

use bgz_harness::pki::{PkiFile, PkiSpec, generate};
use bgz_harness::transport::{PemSource, ServerVerification, TlsFiles, TlsSettings};

#[test]
fn key_material_is_read_from_env_and_never_shown_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate(&PkiSpec::default(), dir.path()).unwrap();
    let key = std::fs::read_to_string(pki.path(PkiFile::HarnessClientKey)).unwrap();
    // SAFETY: this is the only test of this binary, so no other thread reads the
    // environment while it is changed.
    unsafe { std::env::set_var("BGZ_TLS_TEST_CLIENT_KEY", &key) };
    let from_env = TlsFiles {
        client_key: PemSource::Env("BGZ_TLS_TEST_CLIENT_KEY".into()),
        ..pki.harness_tls()
    };
    assert!(TlsSettings::load(&from_env, ServerVerification::Verify).is_ok());

    let unset = TlsFiles {
        client_key: PemSource::Env("BGZ_TLS_TEST_UNSET".into()),
        ..pki.harness_tls()
    };
    let error = TlsSettings::load(&unset, ServerVerification::Verify)
        .unwrap_err()
        .to_string();
    assert!(error.contains("env:BGZ_TLS_TEST_UNSET"), "{error}");

    // A certificate where a key belongs: the error names the file and shows none of it.
    let swapped = TlsFiles {
        client_key: PemSource::File(pki.path(PkiFile::HarnessClient)),
        ..pki.harness_tls()
    };
    let error = TlsSettings::load(&swapped, ServerVerification::Verify)
        .unwrap_err()
        .to_string();
    assert!(error.contains("harness-client.pem"), "{error}");
    assert!(
        !error.contains("BEGIN") && !error.contains("MII"),
        "{error}"
    );

    // A key whose variable holds garbage: named, not echoed.
    unsafe { std::env::set_var("BGZ_TLS_TEST_CLIENT_KEY", "secret-value-123") };
    let error = TlsSettings::load(&from_env, ServerVerification::Verify)
        .unwrap_err()
        .to_string();
    assert!(error.contains("env:BGZ_TLS_TEST_CLIENT_KEY"), "{error}");
    assert!(!error.contains("secret-value-123"), "{error}");
}
