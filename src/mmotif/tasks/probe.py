"""Reading NetHack's dungeon data: where the Oracle and Minetown lie, and where the hero is.

NetHack decides at game start on which level of which dungeon the Oracle and Minetown lie,
and keeps that in its own data: ``dungeon_topology.d_oracle_level`` and the special-level
chain ``sp_levchn`` (``minetn``), and the hero's level in ``u.uz``. NLE runs NetHack as a
shared library loaded from a per-game in-memory file (``Nethack.dlpath``) that exports these
symbols. :class:`DungeonProbe` opens that *already loaded* library with ``RTLD_NOLOAD``
(never a second copy), reads the few bytes it needs with ``ctypes`` and closes its handle
again at once (NLE re-opens the library at every reset and refuses to start if a stale
handle keeps it loaded, so no handle is ever held between calls). Nothing is sent to the
game: no turn passes, no prompt is touched, the RNG is not advanced.

``#overview`` was rejected: it is a free action, but it needs keys while no prompt is
pending, and it only names the Oracle once the hero has *entered* the Delphi room (and never
names Minetown). The glyph evidence the tracker keeps (:mod:`mmotif.tasks.tracker`) is the
exact check when the probe is unavailable.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["DungeonProbe"]


class DungeonProbe:
    """Reads the Oracle/Minetown levels and the hero's level from the running game's library.

    Every read opens the already-loaded library with ``RTLD_NOLOAD`` and closes it before
    returning (see the module docstring). Any failure makes the probe unavailable
    (``available`` False, ``error`` says why); it never raises into the game loop. The
    struct offsets are those of NetHack 3.6.6 in the NLE versions in TESTED_NLE; with any
    other NLE the probe stays off and the exact checks use the glyph evidence.
    """

    TESTED_NLE = ("1.3.",)

    # struct you { xchar ux, uy; schar dx, dy, dz, di; xchar tx, ty, ux0, uy0; d_level uz; ... }
    U_UZ_OFFSET = 10
    # struct s_level { struct s_level *next; d_level dlevel; char proto[15]; ... }
    SLEV_DLEVEL_OFFSET = ctypes.sizeof(ctypes.c_void_p)
    SLEV_PROTO_OFFSET = SLEV_DLEVEL_OFFSET + 2

    def __init__(self, game):
        import nle

        self.path = getattr(getattr(game, "_nh", None), "dlpath", None)
        self.available = self.path is not None and hasattr(os, "RTLD_NOLOAD")
        self.error = "" if self.available else "no NLE library path on this game"
        version = getattr(nle, "__version__", "?")
        if self.available and not version.startswith(self.TESTED_NLE):
            self.available = False
            self.error = f"NLE {version} is not a version whose NetHack data layout was checked"

    def _read(self, reader):
        if not self.available:
            return None
        lib = None
        try:
            lib = ctypes.CDLL(self.path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            return reader(lib)
        except (OSError, ValueError, AttributeError) as err:
            self.available = False
            self.error = f"{type(err).__name__}: {err}"
            return None
        finally:
            if lib is not None:
                import _ctypes
                _ctypes.dlclose(lib._handle)

    def special_levels(self) -> dict[str, tuple[int, int]]:
        """{proto name: (dnum, dlevel)} of the special levels, plus 'oracle' from the topology."""
        def reader(lib):
            out = {}
            node = ctypes.c_void_p.in_dll(lib, "sp_levchn").value
            for _ in range(256):
                if not node:
                    break
                raw = ctypes.string_at(node + self.SLEV_DLEVEL_OFFSET, 2 + 15)
                proto = raw[2:].split(b"\0", 1)[0].decode("latin-1")
                out[proto] = (ctypes.c_int8.from_buffer_copy(raw, 0).value,
                              ctypes.c_int8.from_buffer_copy(raw, 1).value)
                node = ctypes.c_void_p.from_address(node).value
            topo = (ctypes.c_int8 * 2).in_dll(lib, "dungeon_topology")
            out["oracle"] = (topo[0], topo[1])   # d_oracle_level is the first field
            return out
        return self._read(reader) or {}

    def hero_level(self) -> tuple[int, int] | None:
        """(dnum, dlevel) of the hero (u.uz)."""
        def reader(lib):
            raw = (ctypes.c_int8 * 2).from_address(
                ctypes.addressof(ctypes.c_int8.in_dll(lib, "u")) + self.U_UZ_OFFSET)
            return raw[0], raw[1]
        return self._read(reader)

