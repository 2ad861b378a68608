"""registry:2-format configuration, environment overrides, warnings and one-line errors."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regd.config import ConfigError, load_config, parse_config, parse_duration

REFERENCE_CONFIG = """
version: 0.1
log:
  level: debug
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


class ConfigTests(SynchronousTestCase):
    def test_defaults_without_a_file(self):
        loaded = parse_config("storage:\n  filesystem: {}\n", {}, default_root="/srv/data")
        config = loaded.config
        self.assertEqual((config.http.host_addr, config.http.port), ("", 5000))
        self.assertEqual(config.storage.filesystem.rootdirectory, "/srv/data")
        self.assertFalse(config.storage.delete.enabled)
        self.assertTrue(config.storage.maintenance.uploadpurging.enabled)
        self.assertEqual(config.storage.maintenance.uploadpurging.age, 168 * 3600)
        self.assertEqual(loaded.warnings, ())
        self.assertTrue(config.search.enabled)
        self.assertFalse(parse_config("search: {enabled: false}\nstorage: {inmemory: {}}", {}).config.search.enabled)

    def test_no_storage_driver_or_a_misspelt_one_refuses_to_start(self):
        for text in [None, "", "http:\n  addr: :5000\n", "storage:\n  delete:\n    enabled: true\n",
                     "storage:\n  filesytem:\n    rootdirectory: /x\n"]:
            with self.assertRaises(ConfigError) as caught:
                parse_config(text, {})
            self.assertRegex(str(caught.exception), r"^storage(\.filesytem)?: (no storage driver|unknown storage)")
        environ = {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/srv/r"}
        self.assertEqual(parse_config(None, environ).config.storage.filesystem.rootdirectory, "/srv/r")

    def test_reference_config_starts_regd(self):
        loaded = parse_config(REFERENCE_CONFIG, {})
        config = loaded.config
        self.assertEqual(config.log.level, "debug")
        self.assertEqual(config.storage.filesystem.rootdirectory, "/var/lib/registry")
        self.assertTrue(config.storage.delete.enabled)
        self.assertEqual(config.http.headers, {"X-Content-Type-Options": ("nosniff",)})
        self.assertEqual(config.health["storagedriver"]["interval"], "10s")
        self.assertEqual(list(loaded.warnings), [])
        self.assertEqual(config.storage.cache.blobdescriptor, "inmemory")

    def test_environment_overrides(self):
        environ = {
            "REGISTRY_HTTP_ADDR": "0.0.0.0:5001",
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/tmp/elsewhere",
            "REGISTRY_STORAGE_DELETE_ENABLED": "false",
            "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE": "2h",
            "REGISTRY_HTTP_RELATIVEURLS": "true",
            "REGISTRY_LOG_LEVEL": "warn",
        }
        config = parse_config(REFERENCE_CONFIG, environ).config
        self.assertEqual((config.http.host_addr, config.http.port), ("0.0.0.0", 5001))
        self.assertEqual(config.storage.filesystem.rootdirectory, "/tmp/elsewhere")
        self.assertFalse(config.storage.delete.enabled)
        self.assertEqual(config.storage.maintenance.uploadpurging.age, 7200)
        self.assertTrue(config.http.relativeurls)
        self.assertEqual(config.log.level, "warn")

    def test_the_environment_the_registry_guides_use(self):
        """The variables `docker run -e` lines in registry:2 guides set, spelt as they spell them."""
        environ = {
            "REGISTRY_HTTP_ADDR": "0.0.0.0:443",
            "REGISTRY_HTTP_TLS_CERTIFICATE": "/certs/domain.crt",
            "REGISTRY_HTTP_TLS_KEY": "/certs/domain.key",
            "REGISTRY_AUTH": "htpasswd",
            "REGISTRY_AUTH_HTPASSWD_REALM": "Registry Realm",
            "REGISTRY_AUTH_HTPASSWD_PATH": "/auth/htpasswd",
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/data",
            "REGISTRY_STORAGE_MAINTENANCE_READONLY": '{"enabled":true}',
            "REGISTRY_NOTIFICATIONS_ENDPOINTS": "- name: hook\n  url: http://127.0.0.1:1/events\n",
        }
        loaded = parse_config(REFERENCE_CONFIG, environ)
        config = loaded.config
        self.assertEqual((config.http.host_addr, config.http.port), ("0.0.0.0", 443))
        self.assertEqual((config.http.tls.certificate, config.http.tls.key), ("/certs/domain.crt", "/certs/domain.key"))
        self.assertEqual(config.auth, {"htpasswd": {"realm": "Registry Realm", "path": "/auth/htpasswd"}})
        self.assertEqual(config.storage.filesystem.rootdirectory, "/data")
        self.assertTrue(config.storage.maintenance.readonly.enabled)
        self.assertEqual(config.notifications["endpoints"][0]["url"], "http://127.0.0.1:1/events")
        self.assertTrue(parse_config(REFERENCE_CONFIG, {"REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED": "true"})
                        .config.storage.maintenance.readonly.enabled)

    def test_a_section_named_by_its_type_alone(self):
        """REGISTRY_AUTH=htpasswd and REGISTRY_STORAGE=<driver> replace the method or driver, as in registry:2."""
        file_with_token = REFERENCE_CONFIG + "auth:\n  token:\n    realm: https://auth/token\n"
        self.assertEqual(parse_config(file_with_token, {"REGISTRY_AUTH": "htpasswd"}).config.auth, {"htpasswd": {}})
        config = parse_config(REFERENCE_CONFIG, {"REGISTRY_STORAGE": "inmemory"}).config
        self.assertEqual(config.storage.driver, "inmemory")
        self.assertTrue(config.storage.delete.enabled)  # not a driver: kept
        same = parse_config(REFERENCE_CONFIG, {"REGISTRY_STORAGE": "filesystem"}).config
        self.assertEqual(same.storage.filesystem.rootdirectory, "/var/lib/registry")

    def test_unknown_keys_are_warnings_naming_them(self):
        loaded = parse_config("http:\n  adr: :5000\nstorage:\n  filesystem:\n    rootdir: /x\n",
                              {"REGISTRY_NOPE_THING": "1"})
        self.assertIn("unknown configuration key http.adr", loaded.warnings)
        self.assertIn("unknown configuration key storage.filesystem.rootdir", loaded.warnings)
        self.assertIn("environment variable REGISTRY_NOPE_THING matches no configuration key", loaded.warnings)

    def test_cache_redis_and_workers(self):
        config = parse_config("storage: {inmemory: {}, cache: {layerinfo: redis}}\n"
                              "redis: {addr: 'cache.example:6380', password: pw, db: 2, readtimeout: 50ms,\n"
                              "        pool: {maxidle: 4}, tls: {enabled: true, clientcas: [/ca.pem]}}\n"
                              "regd: {workers: 3}\n", {"REGISTRY_REDIS_DB": "5"}).config
        self.assertEqual(config.storage.cache.blobdescriptor, "redis")
        self.assertEqual((config.redis.host, config.redis.port, config.redis.db), ("cache.example", 6380, 5))
        self.assertEqual((config.redis.readtimeout, config.redis.pool.maxidle, config.redis.pool.maxactive),
                         (0.05, 4, 64))
        self.assertEqual(config.redis.tls.clientcas, ("/ca.pem",))
        self.assertNotIn("pw", repr(config.redis))
        self.assertEqual(config.regd.workers, 3)
        self.assertEqual(parse_config("storage: {inmemory: {}}", {}).config.storage.cache.blobdescriptor, "")
        self.assert_error("storage: {inmemory: {}, cache: {blobdescriptor: redis}}", {},
                          "storage.cache.blobdescriptor: redis needs redis.addr (e.g. 127.0.0.1:6379)")
        self.assert_error("storage: {inmemory: {}, cache: {blobdescriptor: memcached}}", {},
                          "storage.cache.blobdescriptor: expected one of inmemory, redis, got 'memcached'")
        self.assert_error("storage: {inmemory: {}}\nredis: {addr: nope}", {},
                          "redis.addr: expected host:port (e.g. :5000 or 127.0.0.1:5000), got 'nope'")
        self.assert_error("storage: {inmemory: {}}\nregd: {workers: 0}", {}, "regd.workers: must be at least 1, got 0")

    def assert_error(self, text, environ, expected):
        with self.assertRaises(ConfigError) as caught:
            parse_config(text, environ)
        message = str(caught.exception)
        self.assertEqual(message, expected)
        self.assertNotIn("\n", message)

    def test_invalid_values_name_the_key(self):
        self.assert_error("http:\n  addr: abc\n", {},
                          "http.addr: expected host:port (e.g. :5000 or 127.0.0.1:5000), got 'abc'")
        self.assert_error("storage:\n  delete:\n    enabled: maybe\n", {},
                          "storage.delete.enabled: expected true or false, got 'maybe'")
        self.assert_error(None, {"REGISTRY_LOG_LEVEL": "loud"},
                          "log.level: expected one of error, warn, info, debug, got 'loud'")
        self.assert_error("validation:\n  manifests:\n    urls:\n      allow: ['(']\n", {},
                          "validation.manifests.urls.allow: invalid regular expression '(': "
                          "missing ), unterminated subpattern at position 0")
        self.assert_error("storage:\n  azure:\n    container: x\n", {},
                          "storage.azure: this storage driver is not available in regd (use filesystem or s3)")
        self.assert_error("storage:\n  s3:\n    bucket: x\n", {},
                          "storage.s3.region: a region (or a regionendpoint) is required")
        self.assert_error("storage:\n  s3:\n    region: eu-west-1\n", {}, "storage.s3.bucket: a bucket name is required")
        self.assert_error("storage:\n  s3:\n    region: r\n    bucket: b\n    chunksize: 1000\n", {},
                          "storage.s3.chunksize: must be at least 5242880, got 1000")
        self.assert_error("storage:\n  s3:\n    region: r\n    bucket: b\n    accesskey: k\n", {},
                          "storage.s3: accesskey and secretkey go together (or leave both out for the AWS "
                          "credential chain)")
        self.assert_error("storage:\n  s3:\n    region: r\n    bucket: b\n    storageclass: cheap\n", {},
                          "storage.s3.storageclass: unknown storage class 'cheap'")
        self.assert_error("storage:\n  maintenance:\n    uploadpurging:\n      age: soon\n", {},
                          "storage.maintenance.uploadpurging.age: expected a duration like 10s or 1h30m, got 'soon'")
        self.assert_error("http: [1, 2]\n", {}, "http: expected a map")
        self.assert_error("http:\n  addr: ':5000\n", {}, "configuration: not valid YAML at line 3")

    def test_s3_keys_as_registry_2_spells_them(self):
        text = ("storage:\n  s3:\n    region: eu-west-1\n    regionendpoint: http://127.0.0.1:9000\n"
                "    bucket: registry\n    accesskey: AK\n    secretkey: SK\n    secure: false\n"
                "    skipverify: true\n    forcepathstyle: true\n    v4auth: true\n    chunksize: 10485760\n"
                "    multipartcopychunksize: 33554432\n    multipartcopymaxconcurrency: 10\n"
                "    multipartcopythresholdsize: 1048576\n    rootdirectory: /prod\n    storageclass: standard_ia\n"
                "    encrypt: true\n    keyid: my-key\n    usedualstack: false\n  redirect:\n    disable: true\n")
        storage = parse_config(text, {}).config.storage
        self.assertEqual(storage.driver, "s3")
        s3 = storage.s3
        self.assertEqual((s3.region, s3.regionendpoint, s3.bucket, s3.accesskey, s3.secretkey),
                         ("eu-west-1", "http://127.0.0.1:9000", "registry", "AK", "SK"))
        self.assertEqual((s3.secure, s3.skipverify, s3.forcepathstyle, s3.v4auth, s3.encrypt, s3.keyid),
                         (False, True, True, True, True, "my-key"))
        self.assertEqual((s3.chunksize, s3.multipartcopychunksize, s3.multipartcopymaxconcurrency,
                          s3.multipartcopythresholdsize), (10485760, 33554432, 10, 1048576))
        self.assertEqual((s3.rootdirectory, s3.storageclass), ("/prod", "STANDARD_IA"))
        self.assertTrue(storage.redirect.disable)
        self.assertNotIn("SK", repr(s3))  # secrets stay out of logs
        defaults = parse_config("storage:\n  s3:\n    region: us-east-1\n    bucket: b\n", {}).config.storage
        self.assertEqual((defaults.s3.chunksize, defaults.s3.secure, defaults.s3.forcepathstyle,
                          defaults.redirect.disable), (10 * 1024 * 1024, True, None, False))
        from_env = parse_config("storage:\n  s3:\n    region: us-east-1\n    bucket: b\n",
                                {"REGISTRY_STORAGE_S3_SECRETKEY": "fromenv", "REGISTRY_STORAGE_S3_ACCESSKEY": "ak"})
        self.assertEqual(from_env.config.storage.s3.secretkey, "fromenv")

    def test_missing_file(self):
        with self.assertRaises(ConfigError) as caught:
            load_config("/nonexistent/regd.yml", {})
        self.assertIn("/nonexistent/regd.yml", str(caught.exception))

    def test_shipped_sample_is_valid_and_complete(self):
        sample = os.path.join(os.path.dirname(__file__), "..", "etc", "regd.yml")
        loaded = load_config(sample, {})
        self.assertEqual(loaded.warnings, ())
        self.assertEqual(loaded.config.storage.filesystem.rootdirectory, "/var/lib/regd")
        self.assertEqual(loaded.config.validation.manifests.urls.allow, ())

    def test_index_keys(self):
        base = "storage: {inmemory: {}}\n"
        config = parse_config(base, {}).config
        self.assertEqual((config.index.path, config.index.refreshinterval, config.index.retention), ("", 2.0, 900.0))
        config = parse_config(base + "index: {path: /x/i.db, refreshinterval: 500ms, retention: 2m}", {}).config
        self.assertEqual((config.index.path, config.index.refreshinterval, config.index.retention),
                         ("/x/i.db", 0.5, 120.0))
        self.assertEqual(parse_config(base, {"REGISTRY_INDEX_PATH": "/y.db"}).config.index.path, "/y.db")
        for bad, key in [("refreshinterval: 0", "index.refreshinterval"), ("retention: 30s", "index.retention"),
                         ("refreshinterval: 2m", "index.retention"), ("refreshinterval: soon", "index.refreshinterval")]:
            with self.assertRaises(ConfigError) as raised:
                parse_config(base + "index: {" + bad + "}", {})
            self.assertIn(key, str(raised.exception))

    def test_durations(self):
        self.assertEqual(parse_duration("1h30m"), 5400)
        self.assertAlmostEqual(parse_duration("500ms"), 0.5)
        self.assertEqual(parse_duration(1_000_000_000), 1.0)
        self.assertEqual(parse_duration("0"), 0)
        for bad in ("10", "1x", "h", "-1s", True):
            self.assertRaises(ValueError, parse_duration, bad)

    @given(st.integers(0, 10_000), st.integers(0, 59), st.integers(0, 59))
    def test_duration_roundtrip(self, hours, minutes, seconds):
        self.assertEqual(parse_duration(f"{hours}h{minutes}m{seconds}s"), hours * 3600 + minutes * 60 + seconds)
