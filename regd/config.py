# -*- test-case-name: tests.test_config -*-
"""
Configuration in the reference registry's YAML format, so an existing
registry:2 config.yml starts regd; REGISTRY_* environment variables override
any key. The result is a frozen attrs tree; errors are one line naming the key.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import attrs
import yaml

from regd.units import parse_duration


class ConfigError(Exception):
    """An invalid configuration; str() is one line naming the key and the problem."""


# -- value parsers ----------------------------------------------------------

def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ValueError(f"expected true or false, got {value!r}")


def _int(minimum: int = 0) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"expected a whole number, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number
    return parse


def _str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return "" if value is None else str(value)


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _str(value).lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text
    return parse


def _str_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(str(v) for v in value)


def _regex_list(value: Any) -> tuple[re.Pattern, ...]:
    patterns = []
    for text in _str_list(value):
        try:
            patterns.append(re.compile(text))
        except re.error as e:
            raise ValueError(f"invalid regular expression {text!r}: {e}") from None
    return tuple(patterns)


def _headers(value: Any) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected a map of header name to list of values")
    return {str(k): _str_list(v) for k, v in value.items()}


def _mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected a map")
    return dict(value)


_ADDR = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9_.-]*)):(?P<port>\d{1,5})$")


def parse_addr(value: Any) -> tuple[str, int]:
    text = _str(value).strip()
    match = _ADDR.match(text)
    if match is None or not 0 <= int(match.group("port")) <= 65535:
        raise ValueError(f"expected host:port (e.g. :5000 or 127.0.0.1:5000), got {text!r}")
    host = match.group("v6") or match.group("host") or ""
    return host, int(match.group("port"))


# -- the tree ---------------------------------------------------------------

@attrs.frozen
class LogConfig:
    level: str = "info"
    formatter: str = "text"
    fields: dict = attrs.field(factory=dict)
    accesslog_disabled: bool = False


@attrs.frozen
class TLSConfig:
    certificate: str = ""
    key: str = ""
    clientcas: tuple[str, ...] = ()
    minimumtls: str = "tls1.2"
    ciphersuites: tuple[str, ...] = ()
    letsencrypt: dict = attrs.field(factory=dict)


@attrs.frozen
class HTTPConfig:
    addr: str = ":5000"
    host_addr: str = ""
    port: int = 5000
    host: str = ""
    prefix: str = ""
    relativeurls: bool = False
    secret: str = attrs.field(default="", repr=False)
    debug_addr: str = ""
    headers: dict = attrs.field(factory=dict)
    tls: TLSConfig = TLSConfig()
    draintimeout: float = 0.0


@attrs.frozen
class FilesystemConfig:
    rootdirectory: str = "/var/lib/regd"
    maxthreads: int = 25


@attrs.frozen
class Switch:
    enabled: bool = False


@attrs.frozen
class UploadPurgingConfig:
    enabled: bool = True
    age: float = 168 * 3600.0
    interval: float = 24 * 3600.0
    dryrun: bool = False


@attrs.frozen
class MaintenanceConfig:
    uploadpurging: UploadPurgingConfig = UploadPurgingConfig()
    readonly: Switch = Switch()


@attrs.frozen
class S3Config:
    """storage.s3, with registry:2's key names and defaults (see regd.storage.s3)."""
    region: str = ""
    regionendpoint: str = ""
    bucket: str = ""
    accesskey: str = ""  # empty: the standard AWS credential chain (environment, ~/.aws, instance role)
    secretkey: str = attrs.field(default="", repr=False)
    sessiontoken: str = attrs.field(default="", repr=False)
    secure: bool = True
    skipverify: bool = False
    forcepathstyle: bool | None = None  # None: path style when regionendpoint is set
    v4auth: bool = True
    chunksize: int = 10 * 1024 * 1024
    multipartcopychunksize: int = 32 * 1024 * 1024
    multipartcopymaxconcurrency: int = 100
    multipartcopythresholdsize: int = 32 * 1024 * 1024
    rootdirectory: str = ""
    storageclass: str = "STANDARD"
    encrypt: bool = False
    keyid: str = ""
    usedualstack: bool = False


@attrs.frozen
class RedirectConfig:
    disable: bool = False


@attrs.frozen
class CacheConfig:
    """storage.cache: the blob-descriptor cache ("" = none, as registry:2 without the key)."""
    blobdescriptor: str = ""
    blobdescriptorsize: int = 10000


@attrs.frozen
class StorageConfig:
    driver: str = "filesystem"
    filesystem: FilesystemConfig = FilesystemConfig()
    cache: CacheConfig = CacheConfig()
    s3: S3Config = S3Config()
    redirect: RedirectConfig = RedirectConfig()
    delete: Switch = Switch()
    maintenance: MaintenanceConfig = MaintenanceConfig()


@attrs.frozen
class URLValidation:
    allow: tuple = ()
    deny: tuple = ()


@attrs.frozen
class ManifestValidation:
    urls: URLValidation = URLValidation()


@attrs.frozen
class ValidationConfig:
    disabled: bool = False
    manifests: ManifestValidation = ManifestValidation()


@attrs.frozen
class GCConfig:
    interval: float = 0.0  # 0: no collection inside the daemon
    grace: float = 3600.0
    deleteuntagged: bool = False


@attrs.frozen
class LimitsConfig:
    """Connection limits (regd.http.limits); 0 switches one off."""
    maxconnections: int = 8192
    maxconnectionsperclient: int = 512
    headtimeout: float = 30.0
    bodytimeout: float = 60.0
    minbodyrate: int = 1024
    idletimeout: float = 300.0
    freespace: int = 1 << 30  # bytes under which /debug/health and GET / report the root nearly full


@attrs.frozen
class RedisPoolConfig:
    maxidle: int = 16
    maxactive: int = 64
    idletimeout: float = 300.0


@attrs.frozen
class RedisTLSConfig:
    enabled: bool = False
    certificate: str = ""
    key: str = ""
    clientcas: tuple[str, ...] = ()


@attrs.frozen
class RedisConfig:
    """The `redis` section, as registry:2 (timeouts in seconds; 0: none set)."""
    addr: str = ""
    host: str = ""
    port: int = 6379
    password: str = attrs.field(default="", repr=False)
    db: int = 0
    dialtimeout: float = 0.0
    readtimeout: float = 0.0
    writetimeout: float = 0.0
    pool: RedisPoolConfig = RedisPoolConfig()
    tls: RedisTLSConfig = RedisTLSConfig()


@attrs.frozen
class RegdConfig:
    workers: int = 1
    maxbodysize: int = 0
    spoolthreshold: int = 65536
    inlinereads: bool = True
    gc: GCConfig = GCConfig()
    limits: LimitsConfig = LimitsConfig()


@attrs.frozen
class UIPageSizes:
    repositories: int = 50
    organizations: int = 50
    tags: int = 50
    search: int = 25


@attrs.frozen
class UIConfig:
    """The web UI under /ui/ (regd.web)."""
    enabled: bool = True
    title: str = "regd"
    pulladdress: str = ""  # host[:port] shown in pull commands; empty: the address the browser used
    sessionmaxage: float = 12 * 3600.0
    pagesize: UIPageSizes = UIPageSizes()


@attrs.frozen
class IndexConfig:
    """The repository index behind search and the web pages (regd.index)."""
    path: str = ""  # SQLite file; "" means <rootdirectory>/regd/index/index.db (in memory for inmemory storage)
    refreshinterval: float = 2.0  # seconds between looks at other instances' change markers
    retention: float = 900.0  # seconds change markers stay in storage


@attrs.frozen
class Config:
    version: str = "0.1"
    log: LogConfig = LogConfig()
    http: HTTPConfig = HTTPConfig()
    storage: StorageConfig = StorageConfig()
    validation: ValidationConfig = ValidationConfig()
    regd: RegdConfig = RegdConfig()
    # Sections other subsystems parse themselves (as plain YAML data).
    notifications: dict = attrs.field(factory=dict)
    auth: dict = attrs.field(factory=dict)
    health: dict = attrs.field(factory=dict)
    search: Switch = Switch(True)
    redis: RedisConfig = RedisConfig()
    ui: UIConfig = UIConfig()
    index: IndexConfig = IndexConfig()


@attrs.frozen
class LoadedConfig:
    config: Config
    warnings: tuple[str, ...]


# The schema: key -> parser, or nested dict. RAW means "kept as plain data".
RAW = object()
IGNORED = object()  # accepted for registry:2 compatibility, not used by regd

SCHEMA: dict[str, Any] = {
    "version": _str,
    "log": {"level": _choice("error", "warn", "info", "debug"), "formatter": _choice("text", "json", "logstash"),
            "fields": _mapping, "accesslog": {"disabled": _bool}, "hooks": IGNORED},
    "loglevel": IGNORED,
    "http": {"addr": parse_addr, "net": _choice("tcp", "unix"), "host": _str, "prefix": _str,
             "relativeurls": _bool, "secret": _str, "draintimeout": parse_duration,
             "headers": _headers, "debug": {"addr": _str, "prometheus": {"enabled": _bool, "path": _str}},
             "http2": {"disabled": _bool},
             "tls": {"certificate": _str, "key": _str, "clientcas": _str_list,
                     "minimumtls": _choice("tls1.0", "tls1.1", "tls1.2", "tls1.3"),
                     "ciphersuites": _str_list, "letsencrypt": RAW}},
    "storage": {"filesystem": {"rootdirectory": _str, "maxthreads": _int(1)}, "inmemory": RAW,
                "delete": {"enabled": _bool},
                "cache": {"blobdescriptor": _choice("inmemory", "redis"), "layerinfo": _choice("inmemory", "redis"),
                          "blobdescriptorsize": _int(1)}, "redirect": {"disable": _bool},
                "maintenance": {"uploadpurging": {"enabled": _bool, "age": parse_duration,
                                                  "interval": parse_duration, "dryrun": _bool},
                                "readonly": {"enabled": _bool}},
                "s3": {"region": _str, "regionendpoint": _str, "bucket": _str, "accesskey": _str,
                       "secretkey": _str, "sessiontoken": _str, "secure": _bool, "skipverify": _bool,
                       "forcepathstyle": _bool, "v4auth": _bool, "chunksize": _int(5 * 1024 * 1024),
                       "multipartcopychunksize": _int(5 * 1024 * 1024), "multipartcopymaxconcurrency": _int(1),
                       "multipartcopythresholdsize": _int(0), "rootdirectory": _str, "storageclass": _str,
                       "encrypt": _bool, "keyid": _str, "usedualstack": _bool,
                       "objectacl": IGNORED, "loglevel": IGNORED, "accelerate": IGNORED},
                "azure": RAW, "gcs": RAW, "swift": RAW, "oss": RAW},
    "validation": {"enabled": _bool, "disabled": _bool,
                   "manifests": {"urls": {"allow": _regex_list, "deny": _regex_list}}},
    "regd": {"workers": _int(1), "maxbodysize": _int(0), "spoolthreshold": _int(1), "inlinereads": _bool,
             "gc": {"interval": parse_duration, "grace": parse_duration, "deleteuntagged": _bool},
             "limits": {"maxconnections": _int(0), "maxconnectionsperclient": _int(0), "headtimeout": parse_duration,
                        "bodytimeout": parse_duration, "minbodyrate": _int(0), "idletimeout": parse_duration,
                        "freespace": _int(0)}},
    "notifications": RAW, "auth": RAW, "health": RAW, "proxy": RAW, "middleware": RAW,
    "redis": {"addr": parse_addr, "password": _str, "db": _int(0), "dialtimeout": parse_duration,
              "readtimeout": parse_duration, "writetimeout": parse_duration,
              "pool": {"maxidle": _int(0), "maxactive": _int(0), "idletimeout": parse_duration},
              "tls": {"enabled": _bool, "certificate": _str, "key": _str, "clientcas": _str_list}},
    "reporting": IGNORED, "compatibility": IGNORED, "catalog": IGNORED,
    "search": {"enabled": _bool},
    "ui": {"enabled": _bool, "title": _str, "pulladdress": _str, "session": {"maxage": parse_duration},
           "pagesize": {"repositories": _int(1), "organizations": _int(1), "tags": _int(1), "search": _int(1)}},
    "index": {"path": _str, "refreshinterval": parse_duration, "retention": parse_duration},
}

MAX_UI_PAGE_SIZE = 100  # the index's largest page
_PULL_ADDRESS = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[a-z0-9._/-]*)?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")

_DRIVERS_AVAILABLE = ("filesystem", "inmemory", "s3")


def _walk(document: Any, schema: dict, path: str, out: dict, warnings: list[str]) -> None:
    if document is None:
        return
    if not isinstance(document, dict):
        raise ConfigError(f"{path or 'configuration'}: expected a map")
    for key, value in document.items():
        key_text = str(key).lower()
        where = f"{path}.{key_text}" if path else key_text
        spec = schema.get(key_text)
        if spec is None:
            warnings.append(f"unknown configuration key {where}")
            continue
        if spec is IGNORED:
            warnings.append(f"configuration key {where} is accepted for compatibility and ignored by regd")
            continue
        if spec is RAW:
            out[key_text] = value if value is not None else {}
        elif isinstance(spec, dict):
            out[key_text] = {}
            _walk(value, spec, where, out[key_text], warnings)
        else:
            try:
                out[key_text] = spec(value)
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from None


def _env_path(parts: list[str], schema: dict) -> list[str] | None:
    """
    Map REGISTRY_A_B_C onto the key path a.b.c, as registry:2 does ('_'
    separates levels; keys have no '_'). None if no known key is named.
    """
    path = [p.lower() for p in parts]
    node: Any = schema
    for key in path:
        if node is RAW:
            return path
        if not isinstance(node, dict) or key not in node or node[key] is IGNORED:
            return None
        node = node[key]
    return path if path else None


def _apply_environment(document: dict, environ: Mapping[str, str], warnings: list[str]) -> None:
    for name in sorted(environ):
        if not name.startswith("REGISTRY_") or name == "REGISTRY_CONFIGURATION_PATH":
            continue
        path = _env_path(name[len("REGISTRY_"):].split("_"), SCHEMA)
        if path is None:
            warnings.append(f"environment variable {name} matches no configuration key")
            continue
        try:
            value = yaml.safe_load(environ[name])
        except yaml.YAMLError:
            value = environ[name]
        if path in (["auth"], ["storage"]) and isinstance(value, str):
            value = _section_by_name(path[0], value, document.get(path[0]))
        node = document
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value


_STORAGE_DRIVERS = ("filesystem", "inmemory", "s3", "azure", "gcs", "swift", "oss")


def _section_by_name(section: str, name: str, current: Any) -> dict:
    """
    registry:2 accepts the type alone for auth and storage (REGISTRY_AUTH=htpasswd,
    REGISTRY_STORAGE=s3): it replaces the method or driver, whose settings
    then come from REGISTRY_AUTH_HTPASSWD_* or REGISTRY_STORAGE_S3_*.
    Storage keys that are not a driver (delete, maintenance, ...) are kept.
    """
    name = name.strip().lower()
    kept = {}
    if section == "storage" and isinstance(current, dict):
        kept = {k: v for k, v in current.items() if str(k).lower() not in _STORAGE_DRIVERS}
        if isinstance(current.get(name), dict):
            kept[name] = current[name]
    kept.setdefault(name, {})
    return kept


def parse_config(text: str | None, environ: Mapping[str, str] = os.environ,
                 default_root: str = "/var/lib/regd") -> LoadedConfig:
    try:
        document = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"configuration: not valid YAML{where}") from None
    document = document or {}
    if not isinstance(document, dict):
        raise ConfigError("configuration: expected a map at the top level")
    warnings: list[str] = []
    _apply_environment(document, environ, warnings)
    _check_storage_names(document.get("storage"))
    values: dict = {}
    _walk(document, SCHEMA, "", values, warnings)
    return LoadedConfig(_build(values, default_root), tuple(warnings))


def _check_storage_names(storage) -> None:
    """A misspelt driver (`filesytem`) is an error, not a warning followed by a default driver."""
    if not isinstance(storage, dict):
        return
    for key in storage:
        if key not in SCHEMA["storage"]:
            raise ConfigError(f"storage.{key}: unknown storage driver or key")


def load_config(path: str | None, environ: Mapping[str, str] = os.environ,
                default_root: str = "/var/lib/regd") -> LoadedConfig:
    path = path or environ.get("REGISTRY_CONFIGURATION_PATH")
    text = None
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"configuration file {path}: {e.strerror or e}") from None
    return parse_config(text, environ, default_root)


def _build(v: dict, default_root: str) -> Config:
    log = v.get("log", {})
    http = v.get("http", {})
    tls = http.get("tls", {})
    storage = v.get("storage", {})
    validation = v.get("validation", {})
    maintenance = storage.get("maintenance", {})
    purging = maintenance.get("uploadpurging", {})

    drivers = [d for d in ("filesystem", "inmemory", "s3", "azure", "gcs", "swift", "oss") if d in storage]
    if len(drivers) > 1:
        raise ConfigError(f"storage: exactly one driver may be configured, found {', '.join(drivers)}")
    if not drivers:
        # As registry:2 does: never a silent default place for the data.
        raise ConfigError("storage: no storage driver configured (e.g. storage.filesystem.rootdirectory)")
    driver = drivers[0]
    if driver not in _DRIVERS_AVAILABLE:
        raise ConfigError(f"storage.{driver}: this storage driver is not available in regd (use filesystem or s3)")
    filesystem = storage.get("filesystem", {})
    root = filesystem.get("rootdirectory") or default_root
    s3 = _s3_config(storage.get("s3")) if driver == "s3" else S3Config()

    host, port = http.get("addr", ("", 5000))
    if http.get("net", "tcp") == "unix":
        raise ConfigError("http.net: unix sockets are not supported; use tcp")
    prefix = http.get("prefix", "")
    if prefix and not (prefix.startswith("/") and prefix.endswith("/")):
        raise ConfigError(f"http.prefix: must start and end with '/', got {prefix!r}")
    base = http.get("host", "")
    if base and not re.match(r"^https?://[^/]+", base):
        raise ConfigError(f"http.host: expected an absolute URL like https://registry.example.com, got {base!r}")
    if "disabled" in validation and "enabled" in validation and validation["disabled"] == validation["enabled"]:
        raise ConfigError("validation: enabled and disabled contradict each other")
    disabled = validation.get("disabled", not validation.get("enabled", True))
    urls = validation.get("manifests", {}).get("urls", {})
    cache = _cache_config(storage.get("cache", {}))
    redis = _redis_config(v.get("redis", {}))
    if cache.blobdescriptor == "redis" and not redis.addr:
        raise ConfigError("storage.cache.blobdescriptor: redis needs redis.addr (e.g. 127.0.0.1:6379)")
    if purging.get("age", 1.0) <= 0 or purging.get("interval", 1.0) <= 0:
        raise ConfigError("storage.maintenance.uploadpurging: age and interval must be positive")

    ui = _ui_config(v.get("ui", {}))
    return Config(
        ui=ui,
        redis=redis,
        version=v.get("version", "0.1"),
        log=LogConfig(level=log.get("level", "info"), formatter=log.get("formatter", "text"),
                      fields=log.get("fields", {}),
                      accesslog_disabled=log.get("accesslog", {}).get("disabled", False)),
        http=HTTPConfig(
            addr=f"{host}:{port}", host_addr=host, port=port, host=base, prefix=prefix,
            relativeurls=http.get("relativeurls", False), secret=http.get("secret", ""),
            debug_addr=http.get("debug", {}).get("addr", ""), headers=http.get("headers", {}),
            draintimeout=http.get("draintimeout", 0.0),
            tls=TLSConfig(certificate=tls.get("certificate", ""), key=tls.get("key", ""),
                          clientcas=tls.get("clientcas", ()), minimumtls=tls.get("minimumtls", "tls1.2"),
                          ciphersuites=tls.get("ciphersuites", ()), letsencrypt=_plain(tls.get("letsencrypt"))),
        ),
        storage=StorageConfig(
            driver=driver,
            filesystem=FilesystemConfig(rootdirectory=os.path.abspath(root),
                                        maxthreads=filesystem.get("maxthreads", 25)),
            s3=s3,
            redirect=RedirectConfig(disable=storage.get("redirect", {}).get("disable", False)),
            cache=cache,
            delete=Switch(storage.get("delete", {}).get("enabled", False)),
            maintenance=MaintenanceConfig(
                uploadpurging=UploadPurgingConfig(
                    enabled=purging.get("enabled", True), age=purging.get("age", 168 * 3600.0),
                    interval=purging.get("interval", 24 * 3600.0), dryrun=purging.get("dryrun", False)),
                readonly=Switch(maintenance.get("readonly", {}).get("enabled", False)),
            ),
        ),
        validation=ValidationConfig(disabled=disabled, manifests=ManifestValidation(
            URLValidation(allow=urls.get("allow", ()), deny=urls.get("deny", ())))),
        regd=RegdConfig(**{**v.get("regd", {}), "gc": GCConfig(**v.get("regd", {}).get("gc", {})),
                           "limits": LimitsConfig(**v.get("regd", {}).get("limits", {}))}),
        notifications=_plain(v.get("notifications")),
        auth=_plain(v.get("auth")),
        health=_plain(v.get("health")),
        search=Switch(v.get("search", {}).get("enabled", True)),
        index=_index(v.get("index", {})),
    )


def _ui_config(ui: dict) -> UIConfig:
    sizes = ui.get("pagesize", {})
    for key, size in sizes.items():
        if size > MAX_UI_PAGE_SIZE:
            raise ConfigError(f"ui.pagesize.{key}: at most {MAX_UI_PAGE_SIZE}, got {size}")
    address = ui.get("pulladdress", "").strip()
    if address and not _PULL_ADDRESS.match(address):
        raise ConfigError(f"ui.pulladdress: expected host[:port] (e.g. registry.example.com:5000), got {address!r}")
    maxage = ui.get("session", {}).get("maxage", 12 * 3600.0)
    if maxage <= 0:
        raise ConfigError("ui.session.maxage: must be positive")
    return UIConfig(enabled=ui.get("enabled", True), title=ui.get("title", "regd") or "regd",
                    pulladdress=address, sessionmaxage=maxage, pagesize=UIPageSizes(**sizes))


def _s3_config(s3: dict) -> S3Config:
    if not s3.get("bucket"):
        raise ConfigError("storage.s3.bucket: a bucket name is required")
    if not s3.get("region") and not s3.get("regionendpoint"):
        raise ConfigError("storage.s3.region: a region (or a regionendpoint) is required")
    if bool(s3.get("accesskey")) != bool(s3.get("secretkey")):
        raise ConfigError("storage.s3: accesskey and secretkey go together (or leave both out for the AWS credential chain)")
    if s3.get("keyid") and not s3.get("encrypt", False):
        raise ConfigError("storage.s3.keyid: needs encrypt: true")
    root = s3.get("rootdirectory", "")
    if any(part in (".", "..") for part in root.split("/")):
        raise ConfigError(f"storage.s3.rootdirectory: must not contain . or .. components, got {root!r}")
    if s3.get("multipartcopychunksize", 1) > 5 * 1024 ** 3:
        raise ConfigError("storage.s3.multipartcopychunksize: S3 copies at most 5 GiB per part")
    storageclass = s3.get("storageclass", "STANDARD")
    if storageclass.upper() not in ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA",
                                    "INTELLIGENT_TIERING", "OUTPOSTS", "GLACIER_IR", "NONE"):
        raise ConfigError(f"storage.s3.storageclass: unknown storage class {storageclass!r}")
    values = {k: v for k, v in s3.items() if k in attrs.fields_dict(S3Config)}
    values["storageclass"] = storageclass.upper()
    values["region"] = s3.get("region") or "us-east-1"
    return S3Config(**values)


def _index(values: dict) -> IndexConfig:
    index = IndexConfig(**values)
    if not 0 < index.refreshinterval <= 3600:
        raise ConfigError("index.refreshinterval: must be more than 0s and at most 1h")
    if index.retention < max(60.0, 10 * index.refreshinterval):
        raise ConfigError("index.retention: must be at least 60s and ten refresh intervals")
    return index


def _cache_config(cache: dict) -> CacheConfig:
    kind = cache.get("blobdescriptor", cache.get("layerinfo", ""))  # layerinfo: its former name
    if "blobdescriptor" in cache and "layerinfo" in cache and cache["blobdescriptor"] != cache["layerinfo"]:
        raise ConfigError("storage.cache: blobdescriptor and layerinfo (its former name) disagree")
    return CacheConfig(blobdescriptor=kind, blobdescriptorsize=cache.get("blobdescriptorsize", 10000))


def _redis_config(redis: dict) -> RedisConfig:
    tls = redis.get("tls", {})
    if tls.get("enabled") and bool(tls.get("certificate")) != bool(tls.get("key")):
        raise ConfigError("redis.tls: certificate and key go together")
    host, port = redis.get("addr", ("", 6379))
    return RedisConfig(
        addr=f"{host}:{port}" if "addr" in redis else "", host=host or "localhost", port=port,
        password=redis.get("password", ""), db=redis.get("db", 0),
        dialtimeout=redis.get("dialtimeout", 0.0), readtimeout=redis.get("readtimeout", 0.0),
        writetimeout=redis.get("writetimeout", 0.0), pool=RedisPoolConfig(**redis.get("pool", {})),
        tls=RedisTLSConfig(**tls))


def _plain(value: Any) -> dict:
    return value if isinstance(value, dict) else {}
