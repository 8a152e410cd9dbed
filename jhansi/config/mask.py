"""The paths in a project that the sandbox never sees, whatever the configuration.

:data:`DEFAULT_MASK` is matched against every path of the project, whatever the case
of its name; ``[sandbox] mask`` adds to it and nothing takes from it. The README
lists the notable entries.
"""

from __future__ import annotations

from typing import Final

DEFAULT_MASK: Final = (
    # Version control, environment files and shell/REPL histories.
    ".git",
    ".git-credentials",
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    ".*_history",
    ".zhistory",
    # Private keys, certificates' keys, keystores and password databases.
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.pkcs12",
    "*.p8",
    "*.jks",
    "*.keystore",
    "*.keytab",
    "*.ppk",
    "*.kdbx",
    "*.keychain",
    "*.keychain-db",
    "*.gpg",
    "secring.*",
    "id_rsa*",
    "id_dsa*",
    "id_ed25519*",
    "id_ecdsa*",
    # Credentials of package indexes, databases and network tools.
    ".netrc",
    "_netrc",
    ".pypirc",
    ".npmrc",
    ".pgpass",
    ".my.cnf",
    ".mylogin.cnf",
    ".htpasswd",
    "*.ovpn",
    # Cloud, container and infrastructure credentials.
    ".aws",
    ".azure",
    ".gcloud",
    ".config/gcloud",
    "*/.config/gcloud",
    ".config/gh",
    "*/.config/gh",
    ".oci",
    ".s3cfg",
    ".boto",
    ".passwd-s3fs",
    ".docker",
    ".dockercfg",
    ".kube",
    ".vault-token",
    ".terraformrc",
    "terraform.rc",
    "*.tfstate",
    "*.tfstate.*",
    "credentials.json",
    "credentials.tfrc.json",
    "application_default_credentials.json",
    "service-account*.json",
    "client_secret*.json",
    "*firebase-adminsdk*.json",
    "secrets.yml",
    "secrets.yaml",
    "secrets.json",
    "secrets.toml",
    ".secrets",
    ".password-store",
    # Personal key stores.
    ".ssh",
    ".gnupg",
)
