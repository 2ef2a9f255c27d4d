"""One settings module, driven by environment variables.

With nothing set it runs the embedded demo: SQLite (WAL), in-memory channel layer, eager Celery and an in-process
scheduler. DATABASE_URL, REDIS_URL, SECRET_KEY, ALLOWED_HOSTS and SKYPORT_FERNET_KEYS switch to production.
"""

import copy
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
TESTING = env.bool("SKYPORT_TESTING", default="pytest" in sys.modules)
SECRET_KEY = env.str("SECRET_KEY", default="skyport-insecure-development-key-change-me-in-production-0123456789")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SKYPORT_PUBLIC_URL = env.str("SKYPORT_PUBLIC_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "django_htmx",
    "channels",
    "apps.core",
    "apps.accounts",
    "apps.clouds",
    "apps.clouds.sim",
    "apps.catalog",
    "apps.deployments",
    "apps.usage",
    "apps.alerts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "apps.core.middleware.RequestContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "apps.core.middleware.CurrentTenantMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.core.context_processors.tenant",
            ],
        },
    }
]

# --- database -------------------------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + IMMEDIATE transactions + a busy timeout: writers queue instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif env.bool("DATABASE_POOL", default=True):
    # A connection pool per process (psycopg_pool): daphne runs each request's ORM work in whichever thread asgiref
    # gives it, and Celery closes a task's connections when it ends, so without a pool every request and every task
    # paid a new PostgreSQL connection (and the server a new backend process). Closing returns the connection.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # persistent connections and a pool exclude each other
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True  # the pool checks a connection before handing it out
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=1),
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=12),
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=20.0),
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
# The simulated cloud keeps its state on its own connection ("sim"), in autocommit, so a rolled-back Skyport
# transaction cannot un-create a sim server, as with a real cloud. SQLite allows one writer per file (and a test's
# open transaction would block the sim), so there the sim gets its own file; PostgreSQL shares the database (MVCC)
# through a second connection, and the test runner gives both aliases the same test database.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _default_db = str(DATABASES["default"]["NAME"])
    _sim_db = _default_db if _default_db in ("", ":memory:") else f"{Path(_default_db).with_suffix('')}-sim.sqlite3"
    DATABASES["sim"] = {**copy.deepcopy(DATABASES["default"]), "NAME": env.str("SKYPORT_SIM_DATABASE", default=_sim_db)}
    SKYPORT_SIM_SHARES_DATABASE = False
else:
    DATABASES["sim"] = copy.deepcopy(DATABASES["default"])
    SKYPORT_SIM_SHARES_DATABASE = True
DATABASE_ROUTERS = ["apps.clouds.sim.router.SimRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, Celery broker, shared cache ----------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
SKYPORT_REDIS_PREFIX = env.str("SKYPORT_REDIS_PREFIX", default="skyport")
if TESTING and REDIS_URL and os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    # the suite's cache.clear() flushes a whole Redis database: each xdist worker gets its own (base db + N)
    _redis = urlsplit(REDIS_URL)
    _redis_db = (int(_redis.path.strip("/") or 0) + int(os.environ["PYTEST_XDIST_WORKER"][2:])) % 16
    REDIS_URL = urlunsplit(_redis._replace(path=f"/{_redis_db}"))
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # channels-redis queues the messages for all the sockets of one web process under one key and drops
            # what arrives while `capacity` messages wait there (its default, 100, is a few seconds of events for a
            # process that relays each of them to hundreds of watchers); `expiry` (seconds) drops messages left
            # unread that long, which only a stuck process leaves
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{SKYPORT_REDIS_PREFIX}:asgi",
                       "capacity": env.int("SKYPORT_CHANNEL_CAPACITY", default=2000),
                       "expiry": env.int("SKYPORT_CHANNEL_EXPIRY", default=60)},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": SKYPORT_REDIS_PREFIX,
        }
    }
    CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
    CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL)
    CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "skyport"}}
    CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="memory://")
    CELERY_RESULT_BACKEND = None
    CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "skyport"
# Periodic work. Celery beat runs it in production; the in-process scheduler (apps.core.scheduler) runs the same
# table in the embedded default, so the demo stays alive without extra processes.
CELERY_BEAT_SCHEDULE = {
    "expire-memberships": {"task": "apps.accounts.tasks.expire_memberships", "schedule": 60.0},
    "prune-notifications": {"task": "apps.accounts.tasks.prune_notifications", "schedule": 3600.0},
    # parked operations come back with a Celery eta; this catches the rest (and is how the embedded default resumes)
    "resume-operations": {"task": "apps.clouds.operations_tasks.operations_resume", "schedule": 5.0},
    "sync-cloud-accounts": {"task": "apps.clouds.tasks.sync_all_accounts", "schedule": 900.0},
    "refresh-catalog-prices": {"task": "apps.catalog.tasks.catalog_prices_refresh", "schedule": 600.0},
    "expire-approvals": {"task": "apps.deployments.tasks.approvals_expire", "schedule": 60.0},
    "enforce-leases": {"task": "apps.deployments.tasks.leases_enforce", "schedule": 60.0},
    "resume-deployments": {"task": "apps.deployments.tasks.deployments_resume", "schedule": 30.0},
    # every second: a tick with nothing due costs a few small queries, and a watched change shows within seconds;
    # a tick the workers could not start within two seconds is dropped (the next one does the same work)
    "reconcile": {"task": "apps.deployments.reconciler_tasks.reconcile_tick", "schedule": 1.0,
                  "options": {"expires": 2.0}},
    "resume-hook-deliveries": {"task": "apps.deployments.hook_tasks.hook_deliveries_resume", "schedule": 30.0},
}
# task modules outside `<app>.tasks` that workers must load
CELERY_IMPORTS = ["apps.clouds.operations_tasks", "apps.catalog.tasks", "apps.deployments.tasks",
                  "apps.deployments.reconciler_tasks", "apps.deployments.hook_tasks"]
# operation kind → function called with the operation after each run (the app that started it follows it)
SKYPORT_OPERATION_FOLLOWERS = {
    "push_image": "apps.catalog.images.image_copy_follow",
    **{kind: "apps.deployments.services.instance_operation_follow" for kind in (
        "create_server", "delete_server", "start_server", "stop_server", "reboot_server", "resize_server")},
}
# launch requests over a catalog item's approval threshold wait this long for a decision
SKYPORT_APPROVAL_HOURS = env.int("SKYPORT_APPROVAL_HOURS", default=48)
# the reconciler: seconds between sweeps of an account-region while something moves or is watched, and otherwise;
# how long an instance may stay in a transitional state before it is marked as an error
SKYPORT_SWEEP_FAST_SECONDS = env.int("SKYPORT_SWEEP_FAST_SECONDS", default=5)
SKYPORT_SWEEP_SLOW_SECONDS = env.int("SKYPORT_SWEEP_SLOW_SECONDS", default=300)
SKYPORT_STUCK_SECONDS = env.int("SKYPORT_STUCK_SECONDS", default=1800)
# operation kind → function giving a local path of the file a step sends, called when the path the operation was
# started with is not on this worker (a push resumed on another machine fetches the image from the store again)
SKYPORT_OPERATION_FILE_SOURCES = {"push_image": "apps.catalog.images.image_copy_local_file"}
# never under tests: a background thread would run the periodic tasks against the test database
SKYPORT_INPROCESS_SCHEDULER = env.bool(
    "SKYPORT_INPROCESS_SCHEDULER", default=CELERY_TASK_ALWAYS_EAGER and not TESTING
)

# --- auth -----------------------------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "apps.accounts.backends.UsernameOrEmailBackend",
    "guardian.backends.ObjectPermissionBackend",
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "core:home"
LOGOUT_REDIRECT_URL = "accounts:login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row
GUARDIAN_RAISE_403 = False
SKYPORT_LOGIN_MAX_FAILURES = env.int("SKYPORT_LOGIN_MAX_FAILURES", default=10)
SKYPORT_LOGIN_WINDOW_SECONDS = env.int("SKYPORT_LOGIN_WINDOW_SECONDS", default=15 * 60)
SKYPORT_INVITATION_DAYS = env.int("SKYPORT_INVITATION_DAYS", default=7)
SKYPORT_TOKEN_MAX_DAYS = env.int("SKYPORT_TOKEN_MAX_DAYS", default=365)

# The simulated cloud: the embedded default's cloud, off in production unless asked for.
SKYPORT_ENABLE_SIM = env.bool("SKYPORT_ENABLE_SIM", default=not REDIS_URL or TESTING)
# Outbound safety: cloud endpoints, image URLs and hooks resolving to loopback/private/link-local addresses are
# refused unless they fall in one of these networks (CIDRs; hooks never reach link-local ones). The demo (its own
# naming-policy hook on 127.0.0.1) and the tests list their local peers here.
SKYPORT_ALLOWED_PRIVATE_NETWORKS = env.list(
    "SKYPORT_ALLOWED_PRIVATE_NETWORKS", default=["127.0.0.0/8", "::1/128"] if TESTING else []
)
# A stable id of this installation, tagged on everything Skyport creates in a cloud.
SKYPORT_INSTALLATION_ID = env.str("SKYPORT_INSTALLATION_ID", default="skyport-dev")

# Image store: "file" (a directory, one server or a shared filesystem) or "s3" (an S3-compatible bucket, for several
# workers). Master files and converted copies live there, keyed by ids. The directory also holds the local scratch
# space (uploads being checked, downloads from the S3 store).
SKYPORT_IMAGE_STORE = env.str("SKYPORT_IMAGE_STORE", default="file")
SKYPORT_IMAGE_DIR = Path(env.str("SKYPORT_IMAGE_DIR", default=str(BASE_DIR / "var" / "images")))
SKYPORT_IMAGE_S3_ENDPOINT = env.str("SKYPORT_IMAGE_S3_ENDPOINT", default="")
SKYPORT_IMAGE_S3_REGION = env.str("SKYPORT_IMAGE_S3_REGION", default="us-east-1")
SKYPORT_IMAGE_S3_BUCKET = env.str("SKYPORT_IMAGE_S3_BUCKET", default="")
SKYPORT_IMAGE_S3_ACCESS_KEY = env.str("SKYPORT_IMAGE_S3_ACCESS_KEY", default="")
SKYPORT_IMAGE_S3_SECRET_KEY = env.str("SKYPORT_IMAGE_S3_SECRET_KEY", default="")
SKYPORT_IMAGE_MAX_BYTES = env.int("SKYPORT_IMAGE_MAX_BYTES", default=50 * 1024**3)  # a file as uploaded
SKYPORT_IMAGE_MAX_VIRTUAL_BYTES = env.int("SKYPORT_IMAGE_MAX_VIRTUAL_BYTES", default=2 * 1024**4)  # the disk it holds
SKYPORT_IMAGE_DOWNLOAD_TIMEOUT = env.int("SKYPORT_IMAGE_DOWNLOAD_TIMEOUT", default=30)  # seconds without data
SKYPORT_IMAGE_DOWNLOAD_MAX_SECONDS = env.int("SKYPORT_IMAGE_DOWNLOAD_MAX_SECONDS", default=6 * 3600)  # in all
# qemu-img runs under prlimit: address space (bytes) and CPU seconds, plus a wall-clock timeout
SKYPORT_IMAGE_QEMU_MEMORY_BYTES = env.int("SKYPORT_IMAGE_QEMU_MEMORY_BYTES", default=1024**3)
SKYPORT_IMAGE_QEMU_CPU_SECONDS = env.int("SKYPORT_IMAGE_QEMU_CPU_SECONDS", default=30)
SKYPORT_IMAGE_QEMU_TIMEOUT = env.int("SKYPORT_IMAGE_QEMU_TIMEOUT", default=60)
SKYPORT_IMAGE_CONVERT_MEMORY_BYTES = env.int("SKYPORT_IMAGE_CONVERT_MEMORY_BYTES", default=2 * 1024**3)
SKYPORT_IMAGE_CONVERT_CPU_SECONDS = env.int("SKYPORT_IMAGE_CONVERT_CPU_SECONDS", default=4 * 3600)
SKYPORT_IMAGE_CONVERT_TIMEOUT = env.int("SKYPORT_IMAGE_CONVERT_TIMEOUT", default=6 * 3600)

# Credentials at rest: MultiFernet, first key encrypts, all keys decrypt (rotation).
# Without the variable, a local key file (written by `make demo`: manage.py generate_fernet_key --write) is used.
SKYPORT_FERNET_KEYS_FILE = Path(env.str("SKYPORT_FERNET_KEYS_FILE", default=str(BASE_DIR / "var" / "fernet.keys")))
SKYPORT_FERNET_KEYS = env.list("SKYPORT_FERNET_KEYS", default=[])
if not SKYPORT_FERNET_KEYS and not TESTING and SKYPORT_FERNET_KEYS_FILE.exists():
    SKYPORT_FERNET_KEYS = [k.strip() for k in SKYPORT_FERNET_KEYS_FILE.read_text().split() if k.strip()]

# --- email ------------------------------------------------------------------------------------------------------
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="skyport@localhost")

# --- REST API ---------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "apps.core.api.pagination.PagePagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.core.api.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["apps.core.api.parsers.SafeJSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Skyport API",
    "DESCRIPTION": "Self-service multi-cloud portal. Authenticate with `Authorization: Token sky_...`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "InvitationStatusEnum": "apps.accounts.api.serializers.INVITATION_STATES",
        "TokenStatusEnum": "apps.accounts.api.serializers.TOKEN_STATES",
        "ImageStateEnum": "apps.catalog.models.Image.State",
        "ImageCopyStateEnum": "apps.catalog.models.ImageCopy.State",
        "CatalogItemKindEnum": "apps.catalog.models.CatalogItem.Kind",
    },
}

# --- static files -----------------------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if TESTING
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG or TESTING

# --- i18n -------------------------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- security ---------------------------------------------------------------------------------------------------
SKYPORT_HTTPS = env.bool("SKYPORT_HTTPS", default=False)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=12 * 3600)
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # probes speak plain HTTP to the backend
if SKYPORT_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SILENCED_SYSTEM_CHECKS = env.list("SILENCED_SYSTEM_CHECKS", default=[])
if not env.bool("SECURE_HSTS_PRELOAD", default=False):
    SILENCED_SYSTEM_CHECKS.append("security.W021")  # preload is an opt-in commitment, not a default

# --- logging ----------------------------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request": {"()": "apps.core.logging.RequestContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "apps.core.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["request"],
            "formatter": "json" if env.bool("LOG_JSON", default=False) else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}

if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
