package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// writePNGChart draws the same grouped bars as writeChart, as a PNG.
func writePNGChart(w io.Writer, title string, rs []benchResult) error {
	const width, height, left, bottom, top = 760, 380, 90, 70, 50
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	text := func(x, y int, s string, c color.Color) {
		d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
		d.DrawString(s)
	}
	centered := func(x, y int, s string, c color.Color) { text(x-len(s)*7/2, y, s, c) }
	rect := func(x0, y0, x1, y1 int, c color.Color) {
		draw.Draw(img, image.Rect(x0, y0, x1, y1), image.NewUniform(c), image.Point{}, draw.Src)
	}
	grey := color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
	dark := color.RGBA{0x33, 0x33, 0x33, 0xff}
	colors := []color.RGBA{{0x3b, 0x7d, 0xd8, 0xff}, {0xe0, 0x8a, 0x2c, 0xff}}
	text(left, 24, title+" (msg/s)", dark)
	maxRate := 1.0
	for _, r := range rs {
		maxRate = max(maxRate, r.pubRate, r.consRate)
	}
	maxRate *= 1.15 // headroom for the value labels
	plotH := float64(height - bottom - top)
	for i := 0; i <= 4; i++ {
		y := height - bottom - int(plotH*float64(i)/4)
		rect(left, y, width-20, y+1, grey)
		label := fmt.Sprintf("%.0f", maxRate*float64(i)/4)
		text(left-8-len(label)*7, y+4, label, dark)
	}
	groupW := float64(width-left-20) / float64(len(rs))
	for i, r := range rs {
		x0 := float64(left) + groupW*float64(i) + groupW*0.15
		bw := groupW * 0.35
		for j, v := range []float64{r.pubRate, r.consRate} {
			h := int(plotH * v / maxRate)
			x := int(x0 + float64(j)*bw)
			rect(x, height-bottom-h, x+int(bw)-4, height-bottom, colors[j])
			centered(x+int(bw/2)-2, height-bottom-h-4, fmt.Sprintf("%.0f", v), dark)
		}
		centered(int(x0+bw), height-bottom+18, r.name, dark)
		centered(int(x0+bw), height-bottom+36, fmt.Sprintf("p50 %v  p99 %v", r.p50, r.p99), dark)
	}
	rect(width-230, 34, width-220, 44, colors[0])
	text(width-214, 44, "publish", dark)
	rect(width-150, 34, width-140, 44, colors[1])
	text(width-134, 44, "consume+ack", dark)
	return png.Encode(w, img)
}
