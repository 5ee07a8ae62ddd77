{
 "patcher": {
  "fileversion": 1,
  "appversion": {
   "major": 8,
   "minor": 5,
   "revision": 0,
   "architecture": "x64",
   "modernui": 1
  },
  "classnamespace": "box",
  "rect": [
   100.0,
   100.0,
   800.0,
   600.0
  ],
  "openinpresentation": 0,
  "default_fontsize": 12.0,
  "gridsize": [
   15.0,
   15.0
  ],
  "boxes": [
   {
    "box": {
     "id": "obj-title",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      20,
      10,
      560,
      20
     ],
     "text": "stemjepa-live player: matches per instrument, beat, top match on the next downbeat"
    }
   },
   {
    "box": {
     "id": "obj-f0",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      20,
      40,
      75,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "follow 0"
    }
   },
   {
    "box": {
     "id": "obj-f1",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      105,
      40,
      75,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "follow 1"
    }
   },
   {
    "box": {
     "id": "obj-f2",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      190,
      40,
      75,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "follow 2"
    }
   },
   {
    "box": {
     "id": "obj-recue",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      275,
      40,
      75,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "recue"
    }
   },
   {
    "box": {
     "id": "obj-pause",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      360,
      40,
      75,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "pause"
    }
   },
   {
    "box": {
     "id": "obj-resume",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      445,
      40,
      75,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "resume"
    }
   },
   {
    "box": {
     "id": "obj-node",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      20,
      80,
      260,
      22
     ],
     "outlettype": [
      "",
      ""
     ],
     "text": "node.script player.js @autostart 1"
    }
   },
   {
    "box": {
     "id": "obj-route",
     "maxclass": "newobj",
     "numinlets": 9,
     "numoutlets": 9,
     "patching_rect": [
      20,
      120,
      520,
      22
     ],
     "outlettype": [
      "",
      "",
      "",
      "",
      "",
      "",
      "",
      "",
      ""
     ],
     "text": "route inst tempo beat load play stop status reply"
    }
   },
   {
    "box": {
     "id": "obj-inst",
     "maxclass": "newobj",
     "numinlets": 4,
     "numoutlets": 4,
     "patching_rect": [
      20,
      160,
      120,
      22
     ],
     "outlettype": [
      "",
      "",
      "",
      ""
     ],
     "text": "route 0 1 2"
    }
   },
   {
    "box": {
     "id": "obj-pre0",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      20,
      200,
      80,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "prepend set"
    }
   },
   {
    "box": {
     "id": "obj-show0",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      110,
      200,
      330,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": ""
    }
   },
   {
    "box": {
     "id": "obj-pre1",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      20,
      240,
      80,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "prepend set"
    }
   },
   {
    "box": {
     "id": "obj-show1",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      110,
      240,
      330,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": ""
    }
   },
   {
    "box": {
     "id": "obj-pre2",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      20,
      280,
      80,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "prepend set"
    }
   },
   {
    "box": {
     "id": "obj-show2",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      110,
      280,
      330,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": ""
    }
   },
   {
    "box": {
     "id": "obj-inst-label",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      110,
      180,
      330,
      20
     ],
     "text": "top match per instrument: name, stem_id, score"
    }
   },
   {
    "box": {
     "id": "obj-tempo",
     "maxclass": "flonum",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      460,
      160,
      70,
      22
     ],
     "outlettype": [
      "",
      "bang"
     ],
     "format": 6
    }
   },
   {
    "box": {
     "id": "obj-tempo-label",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      535,
      160,
      40,
      20
     ],
     "text": "BPM"
    }
   },
   {
    "box": {
     "id": "obj-beat",
     "maxclass": "button",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      460,
      200,
      40,
      40
     ],
     "outlettype": [
      "bang"
     ]
    }
   },
   {
    "box": {
     "id": "obj-beat-label",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      505,
      210,
      40,
      20
     ],
     "text": "beat"
    }
   },
   {
    "box": {
     "id": "obj-load",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      20,
      330,
      100,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "prepend replace"
    }
   },
   {
    "box": {
     "id": "obj-buffer",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      20,
      370,
      140,
      22
     ],
     "outlettype": [
      "float",
      "bang"
     ],
     "text": "buffer~ stemjepa_cue"
    }
   },
   {
    "box": {
     "id": "obj-play",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      200,
      330,
      80,
      22
     ],
     "outlettype": [
      "",
      ""
     ],
     "text": "unpack f f"
    }
   },
   {
    "box": {
     "id": "obj-rate",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      260,
      370,
      40,
      22
     ],
     "outlettype": [
      "signal"
     ],
     "text": "sig~"
    }
   },
   {
    "box": {
     "id": "obj-stop",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      320,
      330,
      30,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "0."
    }
   },
   {
    "box": {
     "id": "obj-loadbang",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      380,
      300,
      60,
      22
     ],
     "outlettype": [
      "bang"
     ],
     "text": "loadbang"
    }
   },
   {
    "box": {
     "id": "obj-loop",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      380,
      330,
      50,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "loop 0"
    }
   },
   {
    "box": {
     "id": "obj-groove",
     "maxclass": "newobj",
     "numinlets": 3,
     "numoutlets": 3,
     "patching_rect": [
      200,
      410,
      160,
      22
     ],
     "outlettype": [
      "signal",
      "signal",
      "signal"
     ],
     "text": "groove~ stemjepa_cue 2"
    }
   },
   {
    "box": {
     "id": "obj-gain",
     "maxclass": "newobj",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      200,
      450,
      50,
      22
     ],
     "outlettype": [
      "signal"
     ],
     "text": "*~ 0.5"
    }
   },
   {
    "box": {
     "id": "obj-gain2",
     "maxclass": "newobj",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      280,
      450,
      50,
      22
     ],
     "outlettype": [
      "signal"
     ],
     "text": "*~ 0.5"
    }
   },
   {
    "box": {
     "id": "obj-dac",
     "maxclass": "ezdac~",
     "numinlets": 2,
     "numoutlets": 0,
     "patching_rect": [
      200,
      490,
      45,
      45
     ]
    }
   },
   {
    "box": {
     "id": "obj-player-label",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      20,
      540,
      520,
      20
     ],
     "text": "load: new top match -> buffer~; play <ms> <rate> at the cue's wall time -> groove~"
    }
   },
   {
    "box": {
     "id": "obj-status-pre",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      460,
      330,
      80,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "prepend set"
    }
   },
   {
    "box": {
     "id": "obj-status",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      460,
      370,
      300,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": ""
    }
   },
   {
    "box": {
     "id": "obj-reply-pre",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      460,
      410,
      80,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "prepend set"
    }
   },
   {
    "box": {
     "id": "obj-reply",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      460,
      450,
      300,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": ""
    }
   },
   {
    "box": {
     "id": "obj-status-label",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      460,
      310,
      300,
      20
     ],
     "text": "status: state hops drops p50 ms / control replies"
    }
   }
  ],
  "lines": [
   {
    "patchline": {
     "source": [
      "obj-f0",
      0
     ],
     "destination": [
      "obj-node",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-f1",
      0
     ],
     "destination": [
      "obj-node",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-f2",
      0
     ],
     "destination": [
      "obj-node",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-recue",
      0
     ],
     "destination": [
      "obj-node",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-pause",
      0
     ],
     "destination": [
      "obj-node",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-resume",
      0
     ],
     "destination": [
      "obj-node",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-node",
      0
     ],
     "destination": [
      "obj-route",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-route",
      0
     ],
     "destination": [
      "obj-inst",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-inst",
      0
     ],
     "destination": [
      "obj-pre0",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-pre0",
      0
     ],
     "destination": [
      "obj-show0",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-inst",
      1
     ],
     "destination": [
      "obj-pre1",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-pre1",
      0
     ],
     "destination": [
      "obj-show1",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-inst",
      2
     ],
     "destination": [
      "obj-pre2",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-pre2",
      0
     ],
     "destination": [
      "obj-show2",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-route",
      1
     ],
     "destination": [
      "obj-tempo",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-route",
      2
     ],
     "destination": [
      "obj-beat",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-route",
      3
     ],
     "destination": [
      "obj-load",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-load",
      0
     ],
     "destination": [
      "obj-buffer",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-route",
      4
     ],
     "destination": [
      "obj-play",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-play",
      1
     ],
     "destination": [
      "obj-rate",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-route",
      5
     ],
     "destination": [
      "obj-stop",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-stop",
      0
     ],
     "destination": [
      "obj-rate",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-loadbang",
      0
     ],
     "destination": [
      "obj-loop",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-play",
      0
     ],
     "destination": [
      "obj-groove",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-rate",
      0
     ],
     "destination": [
      "obj-groove",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-loop",
      0
     ],
     "destination": [
      "obj-groove",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-groove",
      0
     ],
     "destination": [
      "obj-gain",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-groove",
      1
     ],
     "destination": [
      "obj-gain2",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-gain",
      0
     ],
     "destination": [
      "obj-dac",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-gain2",
      0
     ],
     "destination": [
      "obj-dac",
      1
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-route",
      6
     ],
     "destination": [
      "obj-status-pre",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-status-pre",
      0
     ],
     "destination": [
      "obj-status",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-route",
      7
     ],
     "destination": [
      "obj-reply-pre",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-reply-pre",
      0
     ],
     "destination": [
      "obj-reply",
      0
     ]
    }
   }
  ],
  "dependency_cache": [
   {
    "name": "player.js",
    "bootpath": ".",
    "type": "TEXT",
    "implicit": 1
   }
  ],
  "autosave": 0
 }
}