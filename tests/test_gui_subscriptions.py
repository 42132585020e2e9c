"""The stage's video subscriptions: the pure plan, and a real stage whose tiles appear,
resize, scroll away, switch view and get pinned, recorded through the planner's send."""

from __future__ import annotations

import pytest

pytest.importorskip("PyQt5")

from PyQt5.QtCore import QPoint, Qt  # noqa: E402

import config  # noqa: E402
import gui_video  # noqa: E402
from gui_video import SPEAKER, SubscriptionPlanner, TileView, plan_subscriptions  # noqa: E402

SMALL, LARGE = config.VIDEO_LAYER_SMALL, config.VIDEO_LAYER_LARGE
WIDE = config.GUI_LARGE_TILE_MIN_WIDTH_PX


def test_plan_small_large_none_and_limits():
    views = [
        TileView(1, True, 200),
        TileView(2, True, WIDE),  # wide enough for the large layer
        TileView(3, False, WIDE),  # scrolled away / hidden
        TileView(4, True, 100, on_stage=True),
        TileView(5, True, 100, pinned=True),
    ]
    assert plan_subscriptions(views) == {1: SMALL, 2: LARGE, 3: None, 4: LARGE, 5: LARGE}
    many = [TileView(i, True, WIDE + i) for i in range(1, 31)]
    plan = plan_subscriptions(many)
    assert sum(v is not None for v in plan.values()) == config.SUBSCRIBE_MAX_TILES
    assert [p for p, v in plan.items() if v == LARGE] == [27, 28, 29, 30]  # the widest
    assert plan_subscriptions([TileView(9, True, 10), TileView(8, True, 10, pinned=True)])[8] == (
        LARGE
    )


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def __call__(self, plan: dict) -> None:
        self.sent.append({k: v for k, v in plan.items() if v is not None})


def person(pid: int, name: str, video: bool = True) -> dict:
    return {"id": pid, "username": name, "audio": True, "video": video}


@pytest.fixture
def stage(qtbot):
    stage = gui_video.Stage()
    qtbot.add_widget(stage)
    stage.resize(700, 500)
    stage.show()
    qtbot.waitExposed(stage)
    rec = Recorder()
    planner = SubscriptionPlanner(stage.grid.tile_views, rec)
    stage.grid.layout_changed.connect(planner.request)
    stage.show_person(1, "Me", True, person(1, "Me"))
    return stage, planner, rec


def settle(qtbot, planner: SubscriptionPlanner) -> None:
    """Wait until the debounce timer has fired (it runs on the Qt event loop)."""
    qtbot.waitUntil(lambda: not planner.timer.isActive(), timeout=2000)


def test_tiles_subscribe_as_they_appear_and_leave(qtbot, stage):
    stage, planner, rec = stage
    for pid in (2, 3, 4):
        stage.show_person(pid, f"P{pid}", False, person(pid, f"P{pid}"))
    settle(qtbot, planner)
    assert rec.sent[-1] == {2: SMALL, 3: SMALL, 4: SMALL}  # never ourselves
    assert len(rec.sent) == 1, "three joins in a row are one subscribe"
    stage.show_person(5, "Cam off", False, person(5, "Cam off", video=False))
    stage.grid.remove_tile(3)
    settle(qtbot, planner)
    assert rec.sent[-1] == {2: SMALL, 4: SMALL}
    stage.show_person(5, "Cam off", False, person(5, "Cam off", video=True))  # camera on
    settle(qtbot, planner)
    assert rec.sent[-1] == {2: SMALL, 4: SMALL, 5: SMALL}


def test_a_tile_resized_past_the_threshold_moves_to_the_large_layer(qtbot, stage):
    stage, planner, rec = stage
    stage.show_person(2, "Bob", False, person(2, "Bob"))
    settle(qtbot, planner)
    assert stage.grid.tiles[2].width() < WIDE and rec.sent[-1] == {2: SMALL}
    stage.resize(1000, 600)
    settle(qtbot, planner)
    assert stage.grid.tiles[2].width() >= WIDE and rec.sent[-1] == {2: LARGE}
    for pid in range(3, 11):  # ten tiles: each a thumbnail
        stage.show_person(pid, f"P{pid}", False, person(pid, f"P{pid}"))
    settle(qtbot, planner)
    assert set(rec.sent[-1].values()) == {SMALL}
    n = len(rec.sent)
    for width in range(1000, 2400, 100):  # a drag-resize: one subscribe at the end
        stage.resize(width, 1500)
    settle(qtbot, planner)
    assert len(rec.sent) == n + 1
    assert stage.grid.tiles[2].width() >= WIDE and rec.sent[-1][2] == LARGE


def test_speaker_view_stage_is_large_thumbnails_small_scrolled_away_none(qtbot, stage):
    stage, planner, rec = stage
    for pid in range(2, 22):
        stage.show_person(pid, f"P{pid}", False, person(pid, f"P{pid}"))
    stage.set_mode(SPEAKER)
    assert stage.view_button.text() == "Grid view"
    settle(qtbot, planner)
    plan = rec.sent[-1]
    assert plan[2] == LARGE  # nobody spoke yet: the first remote participant
    assert 0 < sum(v == SMALL for v in plan.values()) < 19, "some thumbnails scrolled away"
    assert 21 not in plan  # the last thumbnail is off screen
    bar = stage.grid.strip_scroll
    assert bar.isVisible() and bar.maximum() > 0
    bar.setValue(bar.maximum())  # scroll to the end: the first thumbnails go away
    settle(qtbot, planner)
    assert rec.sent[-1].get(21) == SMALL and 3 not in rec.sent[-1]
    assert rec.sent[-1][2] == LARGE  # the stage does not scroll
    stage.show_levels({7: 250})  # 7 talks: it takes the stage
    settle(qtbot, planner)
    assert rec.sent[-1][7] == LARGE and rec.sent[-1].get(2) != LARGE
    stage.show_levels({8: 250})  # too soon after the last switch: the stage stays
    settle(qtbot, planner)
    assert rec.sent[-1][7] == LARGE and rec.sent[-1].get(8) != LARGE
    stage.set_mode(gui_video.GRID)
    settle(qtbot, planner)
    assert set(rec.sent[-1]) == set(range(2, 22)) and set(rec.sent[-1].values()) == {SMALL}


def test_pin_from_the_context_menu_takes_the_large_layer(qtbot, stage):
    stage, planner, rec = stage
    for pid in range(2, 10):
        stage.show_person(pid, f"P{pid}", False, person(pid, f"P{pid}"))
    settle(qtbot, planner)
    assert rec.sent[-1][5] == SMALL
    menu = stage.grid.tiles[5].pin_menu()
    assert [a.text() for a in menu.actions()] == ["Pin P5"]
    menu.actions()[0].trigger()
    settle(qtbot, planner)
    assert rec.sent[-1][5] == LARGE and stage.grid.tiles[5].pinned
    assert stage.grid.tiles[5].pin_menu().actions()[0].text() == "Unpin P5"
    assert stage.grid.tiles[1].pin_menu().actions() == []  # our own tile cannot be pinned
    stage.set_mode(SPEAKER)
    stage.show_levels({3: 250})  # a pin beats the speaker
    settle(qtbot, planner)
    assert stage.grid.on_stage() == 5 and rec.sent[-1][5] == LARGE
    stage.grid.tiles[5].pin_toggled.emit(5)  # unpin
    settle(qtbot, planner)
    assert stage.grid.on_stage() == 3 and rec.sent[-1][3] == LARGE


def test_hidden_stage_receives_nothing(qtbot, stage):
    stage, planner, rec = stage
    stage.show_person(2, "Bob", False, person(2, "Bob"))
    settle(qtbot, planner)
    assert rec.sent[-1] == {2: SMALL}
    stage.hide()
    settle(qtbot, planner)
    assert rec.sent[-1] == {}
    qtbot.mouseClick(stage.view_button, Qt.LeftButton, pos=QPoint(2, 2))  # no crash hidden


def test_a_frozen_stream_keeps_its_last_good_picture_with_a_badge(qtbot, stage):
    import time

    from PyQt5.QtGui import QImage

    from gui_bridge import LatestFrames

    stage, _planner, _rec = stage
    stage.show_person(2, "Bob", False, person(2, "Bob"))
    video, screen = LatestFrames(), LatestFrames()
    picture = QImage(320, 180, QImage.Format_RGB888)
    picture.fill(0xFF0000)
    video.store_decoded(2, (1, time.monotonic(), picture, None))
    stage.repaint_frames(video, screen, None, lambda: None)
    tile = stage.grid.tiles[2]
    assert tile.showing_video() and not tile.frozen
    # No new picture for a long time (the stream waits for a keyframe): still shown.
    video.store_decoded(2, (2, time.monotonic() - 30, picture, None))
    stage.repaint_frames(video, screen, None, lambda: None)
    assert tile.showing_video() and tile.frozen
    video.store_decoded(2, (3, time.monotonic(), picture, None))
    stage.repaint_frames(video, screen, None, lambda: None)
    assert tile.showing_video() and not tile.frozen
