# Install rules and the Debian package (CPack), included from the top-level CMakeLists.txt.
#   cmake --install build/release            installs under CMAKE_INSTALL_PREFIX (and /etc/quiver)
#   cpack --config build/release/CPackConfig.cmake -B build/package   builds quiver_<ver>_<arch>.deb
# The package holds the binaries, README, LICENSE, an example config (installed as the
# conffile /etc/quiver/config.json) and the systemd unit; its maintainer scripts create the
# quiver system user. Runtime libraries are declared by hand (not dpkg-shlibdeps) so that a CUDA
# build whose toolkit did not come from a Debian package still packages; such a build also needs
# the CUDA runtime and cuBLAS on the target machine.
include(GNUInstallDirs)
install(TARGETS quiver RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
if(TARGET quiver-bench)
  install(TARGETS quiver-bench RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(FILES ${CMAKE_SOURCE_DIR}/README.md ${CMAKE_SOURCE_DIR}/LICENSE
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES ${CMAKE_SOURCE_DIR}/scripts/deploy/config.example.json
        DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
install(FILES ${CMAKE_SOURCE_DIR}/scripts/deploy/config.example.json
        DESTINATION /etc/quiver RENAME config.json)
install(FILES ${CMAKE_SOURCE_DIR}/scripts/deploy/quiver.service
        DESTINATION lib/systemd/system)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME quiver)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "quiver maintainers <quiver-maintainers@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "LLM inference server with an OpenAI-compatible HTTP API")
set(CPACK_PACKAGE_DESCRIPTION "quiver serves language models over an OpenAI-compatible API with continuous batching over a paged KV cache, on CPU or CUDA.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "adduser, libc6, libuv1 (>= 1.44), libcjson1, libssl3, libpcre2-8-0, libutf8proc2")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_SOURCE_DIR}/scripts/deploy/deb/postinst
    ${CMAKE_SOURCE_DIR}/scripts/deploy/deb/prerm
    ${CMAKE_SOURCE_DIR}/scripts/deploy/deb/postrm
    ${CMAKE_SOURCE_DIR}/scripts/deploy/deb/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_STRIP_FILES ON)
include(CPack)
