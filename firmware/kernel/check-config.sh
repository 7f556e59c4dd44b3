#!/bin/sh
# Checks that every setting of a kconfig fragment holds in a final .config.
# merge_config.sh only warns when Kconfig drops an option whose dependencies are missing;
# this makes such a drop fail the build.
# Usage: check-config.sh FRAGMENT DOTCONFIG
set -eu
fragment=$1
config=$2
missing=0
while IFS= read -r line; do
    case $line in
    CONFIG_*=*)
        grep -qxF -- "$line" "$config" || {
            echo "check-config: wanted '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo "${line%%=*} absent")'" >&2
            missing=$((missing + 1))
        }
        ;;
    "# CONFIG_"*" is not set")
        name=${line#\# }
        name=${name%% *}
        if grep -q "^$name=" "$config"; then
            echo "check-config: wanted '$line', got '$(grep "^$name=" "$config")'" >&2
            missing=$((missing + 1))
        fi
        ;;
    esac
done <"$fragment"
if [ "$missing" -ne 0 ]; then
    echo "check-config: $missing setting(s) of $fragment did not survive in $config" >&2
    exit 1
fi
echo "check-config: all settings of $(basename "$fragment") hold"
