# Draws bench/scale.png from bench/scale.dat (written by bench/scale.exs).
set terminal pngcairo size 1100,420 font ",10"
set output "scale.png"
set multiplot layout 1,3
set key top left
set grid
set logscale x 2
set xtics (4, 8, 16, 32)
set xlabel "nodes"
set yrange [0:*]

set title "32,000 names visible on every node"
set ylabel "ms"
plot "scale.dat" using 1:2 with linespoints lw 2 title "Drove", \
     "" using 1:3 with linespoints lw 2 title ":pg"

set title "idle: bytes sent per node"
set ylabel "KB/s"
plot "scale.dat" using 1:($4/1024) with linespoints lw 2 title "median", \
     "" using 1:($5/1024) with linespoints lw 2 title "max"

set title "halted node's names gone from all survivors"
set ylabel "ms"
plot "scale.dat" using 1:6 with linespoints lw 2 title "Drove", \
     "" using 1:7 with linespoints lw 2 title ":pg"
unset multiplot
