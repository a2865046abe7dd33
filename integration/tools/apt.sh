# Sourced by the install scripts (integration/tools, integration/tools-node), which define log.
#
# apt_install_missing PRESENT PKG...: installs the missing packages PKG... with apt, or, with
# none missing, says that PRESENT (what was checked) is there. PULLGUARD_SKIP_APT=1 reports
# what is missing and fails instead of touching apt.
apt_install_missing() {
	local present=$1
	shift
	if [ $# -eq 0 ]; then
		log "apt packages present ($present)"
		return
	fi
	if [ "${PULLGUARD_SKIP_APT:-}" = 1 ]; then
		log "missing apt packages: $* (PULLGUARD_SKIP_APT=1, not installing)"
		return 1
	fi
	local sudo=()
	if [ "$(id -u)" != 0 ]; then sudo=(sudo); fi
	log "apt-get update; apt-get install $*"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
