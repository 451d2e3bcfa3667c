# shellcheck shell=bash
# Sourced by scripts/check-deploy.sh and scripts/check-nginx-upload.sh: makes
# a copy of the Compose stack's nginx configuration (deploy/nginx) that runs
# without root and without Docker, the way host/tests/it/cluster.rs does for
# its tests: the upstream is a given address, the listeners are on loopback
# ports, and the pid file, logs and temporary files are in a folder of the
# caller's. Everything else (limits, buffering, locations, headers) is the
# production configuration as it is, which is what the checks are about.

# nginx_test_config SRC DIR UPSTREAM HTTP_PORT HTTPS_PORT MODE
#   SRC       the deploy/nginx folder
#   DIR       an existing, empty folder for the copy (and nginx's files)
#   UPSTREAM  HOST:PORT of the node the `wasmwiz` upstream points at
#   MODE      tls:   the 443 servers keep TLS, with DIR/fullchain.pem and
#                    DIR/privkey.pem (a self-signed pair made here)
#             plain: the 443 servers listen in plain HTTP/1.1 (their ssl_*
#                    lines dropped), for a client without certificates
# Prints the path of the main configuration file. Fails, naming the line,
# if the configuration no longer has a line this rewrites.
nginx_test_config() {
    local src=$1 dir=$2 upstream=$3 http_port=$4 https_port=$5 mode=$6
    local site=$src/conf.d/wasmwiz.conf main=$src/nginx.conf line
    for line in '    server wasmwiz:8080 max_fails=1 fail_timeout=5s;' 'listen 80;' \
        'listen 443 ssl http2;' '/etc/nginx/certs/fullchain.pem'; do
        grep -qF -- "$line" "$site" || { echo "nginx_test_config: '$line' is gone from $site" >&2; return 1; }
    done
    for line in '/var/log/nginx' '/run/nginx.pid' '    include /etc/nginx/conf.d/'; do
        grep -qF -- "$line" "$main" || { echo "nginx_test_config: '$line' is gone from $main" >&2; return 1; }
    done

    local https_listen="listen 127.0.0.1:$https_port ssl http2;"
    if [ "$mode" = plain ]; then
        https_listen="listen 127.0.0.1:$https_port;"
    elif [ "$mode" = tls ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
            -keyout "$dir/privkey.pem" -out "$dir/fullchain.pem" >/dev/null 2>&1 \
            || { echo "nginx_test_config: openssl could not make a test certificate" >&2; return 1; }
    else
        echo "nginx_test_config: MODE is tls or plain, not '$mode'" >&2
        return 1
    fi

    mkdir -p "$dir/conf.d"
    if [ "$mode" = plain ]; then
        sed -e '/^[[:space:]]*ssl_/d' "$site"
    else
        cat "$site"
    fi | sed \
        -e "s|^    server wasmwiz:8080 max_fails=1 fail_timeout=5s;|    server $upstream max_fails=1 fail_timeout=5s;|" \
        -e "s|listen 80;|listen 127.0.0.1:$http_port;|" \
        -e "/listen \[::\]:80;/d" \
        -e "s|listen 443 ssl http2;|$https_listen|" \
        -e "/listen \[::\]:443 ssl http2;/d" \
        -e "s|/etc/nginx/certs|$dir|g" \
        > "$dir/conf.d/wasmwiz.conf"

    sed \
        -e "s|/var/log/nginx|$dir|g" \
        -e "s|/run/nginx.pid|$dir/nginx.pid|" \
        -e "s|worker_connections 4096;|worker_connections 1024;|" \
        -e "s|^    include /etc/nginx/conf.d/|    client_body_temp_path $dir/body;\n    proxy_temp_path $dir/proxy;\n    fastcgi_temp_path $dir/fastcgi;\n    uwsgi_temp_path $dir/uwsgi;\n    scgi_temp_path $dir/scgi;\n    include $dir/conf.d/|" \
        "$main" > "$dir/nginx.conf"
    echo "$dir/nginx.conf"
}
