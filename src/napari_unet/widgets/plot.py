"""A small live plot of the training loss and validation score, drawn with QPainter.

It needs nothing beyond Qt (no matplotlib), repaints only when Qt asks, and draws at most one
point per horizontal pixel however long the training runs.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot"]

LOSS_COLOR = QColor(255, 170, 60)
VALIDATION_COLOR = QColor(90, 200, 255)


class LossPlot(QWidget):
    """Loss against iteration (left axis) and validation score in [0, 1] (right axis).

    Parameters
    ----------
    parent : QWidget, optional
        The parent widget.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss: list[tuple[int, float]] = []
        self.validation: list[tuple[int, float]] = []
        #: what the validation series is called in the legend, e.g. ``'validation AP'``
        self.validation_label = "validation"
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip(
            "Training loss (orange, left axis) and validation score (blue, right axis, 0-1) "
            "against the iteration."
        )

    def sizeHint(self) -> QSize:
        """Preferred size."""
        return QSize(320, 170)

    def clear(self) -> None:
        """Forget every point."""
        self.loss.clear()
        self.validation.clear()
        self.update()

    def set_validation_label(self, label: str) -> None:
        """Name the validation series (legend and tooltip), e.g. ``'validation AP'``."""
        self.validation_label = label
        self.setToolTip(
            f"Training loss (orange, left axis) and {label} (blue, right axis, 0-1) against "
            "the iteration."
        )
        self.update()

    def add_loss(self, iteration: int, loss: float, redraw: bool = True) -> None:
        """Append one loss value (non-finite values are skipped); ``redraw=False``: leave the
        redraw to a later :meth:`update`."""
        if math.isfinite(loss):
            self.loss.append((int(iteration), float(loss)))
            if redraw:
                self.update()

    def add_validation(self, iteration: int, score: float, redraw: bool = True) -> None:
        """Append one validation score (0-1; non-finite values are skipped)."""
        if math.isfinite(score):
            self.validation.append((int(iteration), float(score)))
            if redraw:
                self.update()

    # -- drawing --------------------------------------------------------------------------------
    def paintEvent(self, event: object) -> None:
        """Draw the axes and both series."""
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            self._draw(painter)
        finally:
            painter.end()

    def _draw(self, painter: QPainter) -> None:
        fg = self.palette().color(self.foregroundRole())
        font = painter.font()
        font.setPointSizeF(max(font.pointSizeF() * 0.85, 6.0))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        left = metrics.horizontalAdvance("0.000") + 8
        right = metrics.horizontalAdvance("1.0") + 8
        top, bottom = 6, metrics.height() + 6
        area = QRectF(left, top, self.width() - left - right, self.height() - top - bottom)
        if area.width() < 20 or area.height() < 20:
            return
        grid = QColor(fg)
        grid.setAlpha(60)
        painter.setPen(QPen(grid, 1))
        painter.drawRect(area)
        if not self.loss:
            painter.setPen(fg)
            painter.drawText(area, Qt.AlignmentFlag.AlignCenter, "loss appears here")
            return
        x_max = max(max(i for i, _ in self.loss), 1)
        if self.validation:
            x_max = max(x_max, max(i for i, _ in self.validation))
        values = [v for _, v in self.loss]
        y_min, y_max = min(min(values), 0.0), max(values)
        if y_max <= y_min:
            y_max = y_min + 1.0

        def point(i: float, v: float, lo: float, hi: float) -> QPointF:
            x = area.left() + area.width() * i / x_max
            y = area.bottom() - area.height() * (v - lo) / (hi - lo)
            return QPointF(x, y)

        self._series(
            painter, self._decimate(self.loss, area.width()), LOSS_COLOR, point, y_min, y_max
        )
        if self.validation:
            self._series(painter, self.validation, VALIDATION_COLOR, point, 0.0, 1.0)
        painter.setPen(fg)
        align_right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        h = metrics.height()
        painter.drawText(QRectF(0, area.top() - h / 2, left - 4, h), align_right, f"{y_max:.3g}")
        painter.drawText(QRectF(0, area.bottom() - h / 2, left - 4, h), align_right, f"{y_min:.3g}")
        if self.validation:
            align_left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
            painter.setPen(VALIDATION_COLOR)
            painter.drawText(
                QRectF(area.right() + 4, area.top() - h / 2, right, h), align_left, "1"
            )
            painter.drawText(
                QRectF(area.right() + 4, area.bottom() - h / 2, right, h), align_left, "0"
            )
            painter.setPen(fg)
        painter.drawText(
            QRectF(area.left(), area.bottom() + 2, area.width(), h),
            Qt.AlignmentFlag.AlignRight,
            f"iteration {x_max}",
        )
        painter.setPen(LOSS_COLOR)
        painter.drawText(
            QRectF(area.left() + 4, area.bottom() + 2, area.width(), h),
            Qt.AlignmentFlag.AlignLeft,
            f"loss {self.loss[-1][1]:.4f}"
            + (
                f"   {self.validation_label} {self.validation[-1][1]:.3f}"
                if self.validation
                else ""
            ),
        )

    @staticmethod
    def _decimate(points: list[tuple[int, float]], width: float) -> list[tuple[int, float]]:
        """Average runs of points so that about one point per pixel is drawn."""
        step = max(int(len(points) / max(width, 1.0)), 1)
        if step == 1:
            return points
        out = []
        for start in range(0, len(points), step):
            chunk = points[start : start + step]
            out.append((chunk[-1][0], sum(v for _, v in chunk) / len(chunk)))
        return out

    @staticmethod
    def _series(painter, points, color, point, lo, hi) -> None:  # type: ignore[no-untyped-def]
        path = QPainterPath()
        for k, (i, v) in enumerate(points):
            p = point(i, v, lo, hi)
            if k == 0:
                path.moveTo(p)
            else:
                path.lineTo(p)
        painter.setPen(QPen(color, 1.5))
        painter.drawPath(path)
        if len(points) == 1:
            painter.drawEllipse(point(*points[0], lo, hi), 2, 2)
