#!/bin/sh
# Render alertmanager.yml for deployment: fill in ONLY Vigil's ${...} placeholders from the
# environment (Alertmanager templates and anything else with a $ are left alone), refuse to
# render with one unset, and check the result with amtool when it is installed.
#   usage: render.sh OUT_DIR    (writes OUT_DIR/alertmanager.yml and OUT_DIR/templates/)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: render.sh OUT_DIR}
vars='TELEGRAM_BOT_TOKEN TELEGRAM_CHAT_ID SMTP_SMARTHOST SMTP_FROM SMTP_USERNAME ALERT_EMAIL_TO'
list=''
for v in $vars; do
  eval "val=\${$v:-}"
  if [ -z "$val" ]; then echo "render.sh: $v must be set" >&2; exit 2; fi
  list="$list \${$v}"
done
mkdir -p "$out/templates"
envsubst "$list" < "$here/alertmanager.yml" > "$out/alertmanager.yml"
cp "$here"/templates/*.tmpl "$out/templates/"
if command -v amtool >/dev/null 2>&1; then amtool check-config "$out/alertmanager.yml" >/dev/null; fi
echo "rendered $out/alertmanager.yml"
