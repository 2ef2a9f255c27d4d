# Gunicorn settings for one OpenStack API service (rendered by scripts/openstack-dev/stack.sh).
import sys

# the apps parse sys.argv with oslo.config: gunicorn's own arguments would kill every worker
sys.argv = sys.argv[:1]

wsgi_app = "@APP@"
bind = "127.0.0.1:@PORT@"
workers = 1
worker_class = "gthread"
threads = 8
keepalive = 75
timeout = 120
proc_name = "@NAME@"
# gunicorn 27 otherwise puts every master's control socket at $HOME/.gunicorn/gunicorn.ctl
control_socket_disable = True
# nova-api asks neutron for the ports of every listed server in one query string
limit_request_line = 0
accesslog = "@STACK@/logs/@NAME@-access.log"
errorlog = "@STACK@/logs/@NAME@-gunicorn.log"
